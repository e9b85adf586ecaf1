package grid

import (
	"fmt"
	"time"
)

// MinTTL and MaxTTL bound a key's time to live. Below a millisecond an
// expiry is noise against the clocks involved; beyond ten years it is a
// mistake (and leader time + TTL must stay far from int64 overflow).
const (
	MinTTL = time.Millisecond
	MaxTTL = 10 * 365 * 24 * time.Hour
)

// ValidateTTL checks a time to live in nanoseconds; 0 means none.
func ValidateTTL(nanos int64) error {
	switch {
	case nanos == 0:
		return nil
	case nanos < 0:
		return fmt.Errorf("%w: ttl %v is negative", ErrBadRequest, time.Duration(nanos))
	case nanos < int64(MinTTL):
		return fmt.Errorf("%w: ttl %v is below the minimum %v", ErrBadRequest, time.Duration(nanos), MinTTL)
	case nanos > int64(MaxTTL):
		return fmt.Errorf("%w: ttl %v exceeds the maximum %v", ErrBadRequest, time.Duration(nanos), MaxTTL)
	}
	return nil
}

// Expired reports whether an entry with this expiry (unix nanoseconds, 0:
// none) has expired at time now (unix nanoseconds).
func Expired(expiry, now int64) bool { return expiry != 0 && expiry <= now }

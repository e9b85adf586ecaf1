package grid

import (
	"errors"
	"fmt"
)

// Limits bound what a single request may carry. They are checked on the node
// before anything is proposed, and on the client before anything is sent.
type Limits struct {
	MaxKeyBytes   int
	MaxValueBytes int
}

// DefaultLimits: keys up to 4 KiB, values up to 1 MiB.
func DefaultLimits() Limits {
	return Limits{MaxKeyBytes: 4 << 10, MaxValueBytes: 1 << 20}
}

// MaxMapNameLen is the longest map name accepted.
const MaxMapNameLen = 64

// ValidateMapName accepts 1..64 characters of [a-zA-Z0-9_.-].
func ValidateMapName(name string) error {
	if name == "" || len(name) > MaxMapNameLen {
		return fmt.Errorf("%w: %q must be 1..%d characters", ErrInvalidMapName, name, MaxMapNameLen)
	}
	for _, r := range name {
		ok := r == '_' || r == '-' || r == '.' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%w: %q may only contain letters, digits, '_', '-' and '.'", ErrInvalidMapName, name)
		}
	}
	return nil
}

// CheckKey reports an empty or oversized key.
func (l Limits) CheckKey(key []byte) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	if len(key) > l.MaxKeyBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(key), l.MaxKeyBytes)
	}
	return nil
}

// CheckValue reports an oversized value.
func (l Limits) CheckValue(value []byte) error {
	if len(value) > l.MaxValueBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(value), l.MaxValueBytes)
	}
	return nil
}

// Validate reports every problem with the limits at once.
func (l Limits) Validate() error {
	var errs []error
	if l.MaxKeyBytes <= 0 || l.MaxKeyBytes > 64<<10 {
		errs = append(errs, fmt.Errorf("%w: max key bytes %d must be in 1..65536", ErrBadConfig, l.MaxKeyBytes))
	}
	if l.MaxValueBytes <= 0 || l.MaxValueBytes > 64<<20 {
		errs = append(errs, fmt.Errorf("%w: max value bytes %d must be in 1..67108864", ErrBadConfig, l.MaxValueBytes))
	}
	return errors.Join(errs...)
}

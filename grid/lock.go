package grid

import (
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// Lock and fence vocabulary shared by the client and the nodes.
//
// A lock's record lives in the partition LockPartition(name) picks: locks are
// hashed like the keys of a reserved keyspace, so they spread over the
// partitions. Its fencing token is the Raft index of the log entry that
// granted it, so it only grows. A fenced write names a fence (the lock's name,
// by convention) and a token; the partition of the key written remembers the
// highest token it has accepted per fence name and refuses lower ones.

// LockSpace is the reserved keyspace lock names are hashed in. It is not a
// valid map name, so no user map can collide with it.
const LockSpace = "#locks"

// MaxLockNameLen is the longest lock (or fence) name accepted, in bytes.
const MaxLockNameLen = 256

// Lease bounds: a lease shorter than MinLeaseTTL cannot be renewed through
// Raft reliably; one longer than MaxLeaseTTL would keep a crashed holder's
// lock for too long.
const (
	MinLeaseTTL     = 100 * time.Millisecond
	MaxLeaseTTL     = time.Hour
	DefaultLeaseTTL = 5 * time.Second
)

// LockOwnerLen is the size of the random owner id a lock handle presents.
const LockOwnerLen = 16

var (
	// ErrInvalidLockName: empty, too long, not UTF-8, or with control characters.
	ErrInvalidLockName = errors.New("grid: invalid lock name")
	// ErrInvalidLeaseTTL: a lease time-to-live out of bounds.
	ErrInvalidLeaseTTL = errors.New("grid: invalid lease ttl")
	// ErrInvalidFence: a fence with a malformed name or token.
	ErrInvalidFence = errors.New("grid: invalid fence")
	// ErrLockHeld: another owner holds the lock (TryLock).
	ErrLockHeld = errors.New("grid: lock held by another owner")
	// ErrLockNotHeld: the caller does not hold the lock (it was never
	// acquired, was released, or its lease expired).
	ErrLockNotHeld = errors.New("grid: lock not held")
	// ErrStaleToken: a fenced write carries a token older than one the
	// resource has already accepted for that fence; nothing was written.
	ErrStaleToken = errors.New("grid: stale fencing token")
)

// ValidateLockName checks a lock or fence name.
func ValidateLockName(name string) error {
	if name == "" || len(name) > MaxLockNameLen {
		return fmt.Errorf("%w: %d bytes, must be 1..%d", ErrInvalidLockName, len(name), MaxLockNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not UTF-8", ErrInvalidLockName, name)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %q contains a control character", ErrInvalidLockName, name)
		}
	}
	return nil
}

// ValidateLeaseTTL checks a lease time-to-live.
func ValidateLeaseTTL(ttl time.Duration) error {
	if ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return fmt.Errorf("%w: %v, must be %v..%v", ErrInvalidLeaseTTL, ttl, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// ValidateFence checks a fence: a valid name and a token above zero (tokens
// are Raft indexes, which start at 1).
func ValidateFence(name string, token uint64) error {
	if err := ValidateLockName(name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidFence, err)
	}
	if token == 0 {
		return fmt.Errorf("%w: token 0 (tokens start at 1)", ErrInvalidFence)
	}
	return nil
}

// LockPartition is the partition that holds the named lock's record.
func LockPartition(name string, partitions int) int {
	return PartitionOf(LockSpace, []byte(name), partitions)
}

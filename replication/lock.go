package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Locks and fences in a data partition's state machine.
//
// A lock record (sub-space 'l' 'k') says who holds the lock, the fencing
// token of the grant and when the lease ends. Time is the leader_time of the
// command being applied, never a local clock, so every replica decides the
// same. The token of a grant is the Raft index of the entry that made it
// (or the last token plus one, if that were ever lower): the record is kept
// after release, and indexes only grow, through leader changes and snapshot
// restores alike, so a lock's tokens only grow.
//
// A fence record (sub-space 'l' 'f') is the highest token a partition has
// accepted for a fence name in a fenced write; a lower token is refused.

// Result.Error codes of lock commands and fenced writes.
const (
	resStaleToken  = "STALE_TOKEN"
	resLockNotHeld = "LOCK_NOT_HELD"
	resBadLock     = "INVALID_LOCK_COMMAND"
)

func readLock(tx *txn, key []byte) (*gridpb.LockRecord, error) {
	raw, err := tx.get(key)
	if errors.Is(err, ErrEngineNotFound) {
		return &gridpb.LockRecord{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replication: read lock: %w", err)
	}
	var rec gridpb.LockRecord
	if err := proto.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("%w: lock record: %v", ErrCorrupt, err)
	}
	return &rec, nil
}

func writeLock(tx *txn, key []byte, rec *gridpb.LockRecord) error {
	b, err := proto.Marshal(rec)
	if err != nil {
		return fmt.Errorf("replication: encode lock record: %w", err)
	}
	tx.set(key, b)
	return nil
}

// heldBy reports whether owner holds rec's lock at leader time now.
func heldBy(rec *gridpb.LockRecord, owner []byte, now int64) bool {
	return len(rec.Owner) > 0 && bytes.Equal(rec.Owner, owner) && now < rec.Expiry
}

func validLockOp(name string, owner []byte) bool { return name != "" && len(owner) > 0 }

func (a *kvApplier) applyLockAcquire(tx *txn, index uint64, now int64, op *gridpb.LockAcquireOp) (*gridpb.Result, error) {
	if !validLockOp(op.Name, op.Owner) || op.TtlNs <= 0 {
		return &gridpb.Result{Error: resBadLock}, nil
	}
	key := lockKey(a.group, op.Name)
	rec, err := readLock(tx, key)
	if err != nil {
		return nil, err
	}
	switch {
	case heldBy(rec, op.Owner, now):
		// The same handle asking again (a retry after an ambiguous
		// failure): it keeps its token and its lease is renewed.
		rec.Expiry = max(rec.Expiry, now+op.TtlNs)
		rec.TtlNs = op.TtlNs
	case len(rec.Owner) > 0 && now < rec.Expiry:
		return &gridpb.Result{Ok: false, Version: rec.Token, LeaseExpiry: rec.Expiry}, nil
	default: // free, or the holder's lease has expired
		rec = &gridpb.LockRecord{Owner: op.Owner, Token: max(index, rec.Token+1), Expiry: now + op.TtlNs, TtlNs: op.TtlNs}
	}
	if err := writeLock(tx, key, rec); err != nil {
		return nil, err
	}
	return &gridpb.Result{Ok: true, Version: rec.Token, LeaseExpiry: rec.Expiry}, nil
}

func (a *kvApplier) applyLockRenew(tx *txn, now int64, op *gridpb.LockRenewOp) (*gridpb.Result, error) {
	key, rec, refused, err := a.heldLock(tx, now, op.Name, op.Owner, op.Token)
	if err != nil || refused != nil {
		return refused, err
	}
	rec.Expiry = max(rec.Expiry, now+rec.TtlNs)
	if err := writeLock(tx, key, rec); err != nil {
		return nil, err
	}
	return &gridpb.Result{Ok: true, Version: rec.Token, LeaseExpiry: rec.Expiry}, nil
}

// applyLockRelease frees the lock, keeping its last token. Releasing a lease
// that already expired is refused (and changes nothing): the caller did not
// hold the lock any more when it asked.
func (a *kvApplier) applyLockRelease(tx *txn, now int64, op *gridpb.LockReleaseOp) (*gridpb.Result, error) {
	key, rec, refused, err := a.heldLock(tx, now, op.Name, op.Owner, op.Token)
	if err != nil || refused != nil {
		return refused, err
	}
	if err := writeLock(tx, key, &gridpb.LockRecord{Token: rec.Token}); err != nil {
		return nil, err
	}
	return &gridpb.Result{Ok: true, Version: rec.Token}, nil
}

// heldLock reads the lock record that owner must hold, with token, at leader
// time now; if it does not, refused says why.
func (a *kvApplier) heldLock(tx *txn, now int64, name string, owner []byte, token uint64) (key []byte, rec *gridpb.LockRecord, refused *gridpb.Result, err error) {
	if !validLockOp(name, owner) {
		return nil, nil, &gridpb.Result{Error: resBadLock}, nil
	}
	key = lockKey(a.group, name)
	if rec, err = readLock(tx, key); err != nil {
		return nil, nil, nil, err
	}
	if !heldBy(rec, owner, now) || rec.Token != token {
		return nil, nil, &gridpb.Result{Error: resLockNotHeld, Version: rec.Token}, nil
	}
	return key, rec, nil, nil
}

// checkFence returns a STALE_TOKEN result if f's token is below the highest
// this partition has accepted for f's name; otherwise it records the token
// (in the same batch as the write that follows) and returns nil.
func (a *kvApplier) checkFence(tx *txn, f *gridpb.Fence) (*gridpb.Result, error) {
	if f == nil {
		return nil, nil
	}
	if f.Name == "" || f.Token == 0 {
		return &gridpb.Result{Error: resBadLock}, nil
	}
	key := fenceKey(a.group, f.Name)
	cur := uint64(0)
	raw, err := tx.get(key)
	switch {
	case errors.Is(err, ErrEngineNotFound):
	case err != nil:
		return nil, fmt.Errorf("replication: read fence: %w", err)
	case len(raw) != 8:
		return nil, fmt.Errorf("%w: fence record of %d bytes", ErrCorrupt, len(raw))
	default:
		cur = binary.BigEndian.Uint64(raw)
	}
	if f.Token < cur {
		return &gridpb.Result{Error: resStaleToken, Version: cur}, nil
	}
	if f.Token > cur {
		tx.set(key, binary.BigEndian.AppendUint64(nil, f.Token))
	}
	return nil, nil
}

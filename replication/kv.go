package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// dedupRetention is how long (in leader time) a client's request id is
// remembered. A client retries within seconds; minutes leave ample margin.
const dedupRetention = 10 * time.Minute

// dedupPruneEvery is how many log indexes pass between two prunes of old
// dedup records. Pruning is driven by the log, so every replica prunes the
// same records at the same index.
const dedupPruneEvery = 4096

// applyResult is what a data partition's ApplyFuture returns.
type applyResult struct {
	res *gridpb.Result
	err error
}

// kvApplier applies data partition commands.
type kvApplier struct {
	group GroupID
	// checks digests the state at CheckOps; corrupt quarantines this
	// replica when a command fails its own checks (see applyOp).
	checks  *checks
	corrupt *corruption
}

var _ applier = (*kvApplier)(nil)

func (a *kvApplier) restored(Engine) error { return nil }

func (a *kvApplier) apply(tx *txn, index uint64, data []byte) any {
	var cmd gridpb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		// The leader encoded this command itself: a replica that cannot
		// decode it holds a damaged log entry. It changes nothing here and
		// the replica is quarantined, since it now lacks a write.
		a.corrupt.mark(fmt.Sprintf("raft log entry %d is undecodable", index))
		return applyResult{err: fmt.Errorf("%w: undecodable command at index %d: %v", ErrCorrupt, index, err)}
	}
	if index%dedupPruneEvery == 0 {
		a.pruneDedup(tx, cmd.LeaderTime)
	}
	if cmd.ClientId != 0 {
		if prev, ok := a.lookupDedup(tx, cmd.ClientId, cmd.Seq); ok {
			return applyResult{res: prev}
		}
	}
	res, err := a.applyOp(tx, index, &cmd)
	if err != nil {
		return applyResult{err: err}
	}
	if c := cmd.GetCas(); c != nil && c.DedupOnlyIfSwapped && !res.Ok {
		return applyResult{res: res}
	}
	if cmd.ClientId != 0 {
		rec, merr := proto.Marshal(res)
		if merr == nil {
			v := binary.BigEndian.AppendUint64(nil, uint64(cmd.LeaderTime))
			tx.set(dedupKey(a.group, cmd.ClientId, cmd.Seq), append(v, rec...))
		}
	}
	return applyResult{res: res}
}

// checksumMismatch handles a command whose value fails the CRC32C it
// carries. The node checked every value against its CRC before proposing,
// so the entry changed after that (a damaged Raft log on this replica, or
// memory): nothing is written, the proposer (if here) gets ErrChecksum, and
// this replica, which now lacks the write, is quarantined and rebuilt from
// a healthy replica's snapshot. Replicas holding a sound copy of the entry
// apply it normally, so the partition's majority stays correct.
func (a *kvApplier) checksumMismatch(index uint64, key []byte) (*gridpb.Result, error) {
	a.corrupt.mark(fmt.Sprintf("raft log entry %d: value of %q fails its CRC32C at apply", index, key))
	return &gridpb.Result{Error: "CHECKSUM"}, nil
}

func (a *kvApplier) applyOp(tx *txn, index uint64, cmd *gridpb.Command) (*gridpb.Result, error) {
	switch op := cmd.Op.(type) {
	case *gridpb.Command_Check:
		tx.flushPending()
		a.checks.start(tx.eng, a.group, op.Check.CheckId, index)
		return &gridpb.Result{Ok: true, Version: index}, nil
	case *gridpb.Command_Put:
		p := op.Put
		crc := Checksum(p.Value)
		if p.Crc != 0 && p.Crc != crc {
			return a.checksumMismatch(index, p.Key)
		}
		if stale, err := a.checkFence(tx, p.Fence); err != nil || stale != nil {
			return stale, err
		}
		tx.set(dataKey(a.group, p.Map, p.Key), encodeEntry(StoredEntry{Version: index, CRC: crc, Value: p.Value}))
		return &gridpb.Result{Ok: true, Version: index}, nil
	case *gridpb.Command_Delete:
		d := op.Delete
		k := dataKey(a.group, d.Map, d.Key)
		_, err := tx.get(k)
		switch {
		case errors.Is(err, ErrEngineNotFound):
			return &gridpb.Result{Ok: true, Existed: false, Version: index}, nil
		case err != nil:
			return nil, fmt.Errorf("replication: delete read: %w", err)
		}
		tx.del(k)
		return &gridpb.Result{Ok: true, Existed: true, Version: index}, nil
	case *gridpb.Command_Cas:
		c := op.Cas
		k := dataKey(a.group, c.Map, c.Key)
		cur := uint64(0)
		raw, err := tx.get(k)
		switch {
		case errors.Is(err, ErrEngineNotFound):
		case err != nil:
			return nil, fmt.Errorf("replication: cas read: %w", err)
		default:
			e, derr := decodeEntry(raw)
			if derr != nil {
				// This replica's stored entry is damaged; the others decide
				// on theirs, so this one is quarantined.
				a.corrupt.mark(fmt.Sprintf("stored entry %q fails its CRC32C at apply (index %d)", c.Key, index))
				return nil, fmt.Errorf("%w: %w", grid.ErrChecksum, derr)
			}
			cur = e.Version
		}
		if cur != c.ExpectedVersion {
			return &gridpb.Result{Ok: false, Existed: cur != 0, Version: cur}, nil
		}
		if c.Delete {
			if cur != 0 {
				tx.del(k)
			}
			return &gridpb.Result{Ok: true, Existed: cur != 0, Version: 0}, nil
		}
		crc := Checksum(c.Value)
		if c.Crc != 0 && c.Crc != crc {
			return a.checksumMismatch(index, c.Key)
		}
		tx.set(k, encodeEntry(StoredEntry{Version: index, CRC: crc, Value: c.Value}))
		return &gridpb.Result{Ok: true, Existed: cur != 0, Version: index}, nil
	case *gridpb.Command_Txn:
		return a.applyTxn(tx, index, op.Txn)
	case *gridpb.Command_LockAcquire:
		return a.applyLockAcquire(tx, index, cmd.LeaderTime, op.LockAcquire)
	case *gridpb.Command_LockRenew:
		return a.applyLockRenew(tx, cmd.LeaderTime, op.LockRenew)
	case *gridpb.Command_LockRelease:
		return a.applyLockRelease(tx, cmd.LeaderTime, op.LockRelease)
	case *gridpb.Command_Restore:
		return a.applyRestore(tx, index, cmd.LeaderTime, op.Restore)
	default:
		return nil, fmt.Errorf("%w: command without an operation", ErrCorrupt)
	}
}

// applyTxn evaluates every compare against the state before the entry,
// then applies one branch; the whole entry is one atomic engine batch.
func (a *kvApplier) applyTxn(tx *txn, index uint64, t *gridpb.TxnOp) (*gridpb.Result, error) {
	ok := true
	for _, c := range t.Compares {
		raw, err := tx.get(dataKey(a.group, t.Map, c.Key))
		exists := err == nil
		if err != nil && !errors.Is(err, ErrEngineNotFound) {
			return nil, fmt.Errorf("replication: txn read: %w", err)
		}
		var cur StoredEntry
		if exists {
			if cur, err = decodeEntry(raw); err != nil {
				a.corrupt.mark(fmt.Sprintf("stored entry %q fails its CRC32C at apply (index %d)", c.Key, index))
				return nil, fmt.Errorf("%w: %w", grid.ErrChecksum, err)
			}
		}
		switch c.Target {
		case gridpb.TxnCompare_VERSION:
			ok = ok && cur.Version == c.Version // version 0: absent
		case gridpb.TxnCompare_VALUE:
			ok = ok && exists && string(cur.Value) == string(c.Value)
		case gridpb.TxnCompare_EXISTS:
			ok = ok && exists
		case gridpb.TxnCompare_MISSING:
			ok = ok && !exists
		}
	}
	ops := t.ThenOps
	if !ok {
		ops = t.ElseOps
	}
	for _, w := range ops {
		if !w.Delete && w.Crc != 0 && w.Crc != Checksum(w.Value) {
			return a.checksumMismatch(index, w.Key) // nothing applied: checked before any write
		}
	}
	for _, w := range ops {
		k := dataKey(a.group, t.Map, w.Key)
		if w.Delete {
			tx.del(k)
			continue
		}
		tx.set(k, encodeEntry(StoredEntry{Version: index, CRC: Checksum(w.Value), Value: w.Value}))
	}
	return &gridpb.Result{Ok: ok, Version: index}, nil
}

func (a *kvApplier) lookupDedup(tx *txn, client, seq uint64) (*gridpb.Result, bool) {
	raw, err := tx.get(dedupKey(a.group, client, seq))
	if err != nil || len(raw) < 8 {
		return nil, false
	}
	var res gridpb.Result
	if err := proto.Unmarshal(raw[8:], &res); err != nil {
		return nil, false
	}
	return &res, true
}

// dedupPruneMax bounds the deletes of one prune, so one command never grows
// an engine batch past its limits; the rest go at the next prune.
const dedupPruneMax = 1000

// pruneDedup deletes dedup records older than the retention, measured in the
// leader time of the command at this index.
func (a *kvApplier) pruneDedup(tx *txn, now int64) {
	pruned := 0
	cutoff := now - int64(dedupRetention)
	v, err := tx.eng.NewView()
	if err != nil {
		return
	}
	defer v.Close()
	_ = v.Iterate(dedupPrefix(a.group), nil, func(k, val []byte) (bool, error) {
		if len(val) >= 8 && int64(binary.BigEndian.Uint64(val)) < cutoff {
			tx.del(append([]byte(nil), k...))
			pruned++
		}
		return pruned < dedupPruneMax, nil
	})
}

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
// same records at the same index. A prune reads only expired records (the
// time index), and may delete dedupPruneMax of them, more than the
// dedupPruneEvery entries that can have added one each since the last.
const dedupPruneEvery = 256

// applyResult is what a data partition's ApplyFuture returns.
type applyResult struct {
	res *gridpb.Result
	err error
}

// kvApplier applies data partition commands. Besides the data it keeps the
// expiry index (keys written with a TTL, by expiry time) and the change log
// that watches read; both are written in the same batch as the data.
type kvApplier struct {
	group GroupID
	// checks digests the state at CheckOps; corrupt quarantines this
	// replica when a command fails its own checks (see applyOp).
	checks  *checks
	corrupt *corruption
	log     *changeLog
	events  []*gridpb.WatchEvent // the current entry's changes
	// hint spares the expiry sweep reading an index with nothing due;
	// filed notes that the batch being built files an expiry.
	hint  expiryHint
	filed bool
}

var (
	_ applier   = (*kvApplier)(nil)
	_ flushHook = (*kvApplier)(nil)
)

func newKVApplier(g GroupID, eng Engine, r WatchRetention, checks *checks, corrupt *corruption) (*kvApplier, error) {
	a := &kvApplier{group: g, checks: checks, corrupt: corrupt, log: newChangeLog(g, r)}
	if err := a.log.load(eng); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *kvApplier) restored(eng Engine) error {
	a.hint.forget()
	return a.log.load(eng)
}

func (a *kvApplier) beforeFlush(tx *txn) { a.log.beforeFlush(tx) }

// afterFlush runs once a batch is written: a new expiry in it makes the
// sweep read the index again.
func (a *kvApplier) afterFlush() {
	if a.filed {
		a.filed = false
		a.hint.forget()
	}
}

func (a *kvApplier) apply(tx *txn, index uint64, data []byte) any {
	var cmd gridpb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		// The leader encoded this command itself: a replica that cannot
		// decode it holds a damaged log entry. It changes nothing here and
		// the replica is quarantined, since it now lacks a write.
		a.log.prune(tx, index)
		a.corrupt.mark(fmt.Sprintf("raft log entry %d is undecodable", index))
		return applyResult{err: fmt.Errorf("%w: undecodable command at index %d: %v", ErrCorrupt, index, err)}
	}
	if c := cmd.GetCheck(); c != nil {
		// A check marker digests the state just before this entry, the
		// same on every replica: it starts before anything of this entry
		// (even a prune) enters the batch, whose cut differs by replica.
		tx.flushPending()
		a.checks.start(tx.eng, a.group, c.CheckId, index)
	}
	if index%dedupPruneEvery == 0 {
		// The prune reads the engine: it must hold every entry before this
		// one on every replica alike, however each cut its batches.
		tx.flushPending()
	}
	a.log.prune(tx, index)
	if index%dedupPruneEvery == 0 {
		a.pruneDedup(tx, cmd.LeaderTime)
	}
	if cmd.ClientId != 0 {
		if prev, ok := a.lookupDedup(tx, cmd.ClientId, cmd.Seq); ok {
			return applyResult{res: prev}
		}
	}
	a.events = a.events[:0]
	res, err := a.applyOp(tx, index, &cmd)
	if err != nil {
		return applyResult{err: err}
	}
	a.log.record(tx, index, a.events)
	a.events = nil // the log record owns them now
	if c := cmd.GetCas(); c != nil && c.DedupOnlyIfSwapped && !res.Ok {
		return applyResult{res: res}
	}
	if cmd.ClientId != 0 {
		rec, merr := proto.Marshal(res)
		if merr == nil {
			v := binary.BigEndian.AppendUint64(nil, uint64(cmd.LeaderTime))
			tx.set(dedupKey(a.group, cmd.ClientId, cmd.Seq), append(v, rec...))
			tx.set(dedupTimeKey(a.group, cmd.LeaderTime, cmd.ClientId, cmd.Seq), []byte{1})
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
	return &gridpb.Result{Error: resChecksum}, nil
}

// Result error codes of deterministic refusals.
const (
	resChecksum = "CHECKSUM"
	resBadTTL   = "BAD_TTL"
)

// current reads a key's entry as of the txn. present: stored at all; live:
// present and not expired at now (the command's leader time). An expired
// key is missing to every operation until the sweeper deletes it. A stored
// entry failing its CRC32C quarantines this replica (the others decide on
// theirs).
func (a *kvApplier) current(tx *txn, index uint64, mapName string, key []byte, now int64) (e StoredEntry, present, live bool, err error) {
	raw, err := tx.get(dataKey(a.group, mapName, key))
	switch {
	case errors.Is(err, ErrEngineNotFound):
		return StoredEntry{}, false, false, nil
	case err != nil:
		return StoredEntry{}, false, false, fmt.Errorf("replication: read %q: %w", key, err)
	}
	if e, err = decodeEntry(raw); err != nil {
		a.corrupt.mark(fmt.Sprintf("stored entry %q fails its CRC32C at apply (index %d)", key, index))
		return StoredEntry{}, false, false, fmt.Errorf("%w: %w", grid.ErrChecksum, err)
	}
	return e, true, !grid.Expired(e.Expiry, now), nil
}

// put writes a value (whose CRC32C is crc) at version index, with an expiry
// of now + ttl if ttl is set.
func (a *kvApplier) put(tx *txn, index uint64, now int64, mapName string, key, value []byte, crc uint32, ttl int64) {
	e := StoredEntry{Version: index, CRC: crc, Value: value}
	if ttl > 0 {
		e.Expiry = now + ttl
	}
	a.putEntry(tx, mapName, key, e)
}

// putEntry stores e, files it in the expiry index when it expires, and
// records the change.
func (a *kvApplier) putEntry(tx *txn, mapName string, key []byte, e StoredEntry) {
	if e.Expiry != 0 {
		tx.set(expiryKey(a.group, e.Expiry, mapName, key), binary.BigEndian.AppendUint64(nil, e.Version))
		a.filed = true
	}
	tx.set(dataKey(a.group, mapName, key), encodeEntry(e))
	a.events = append(a.events, &gridpb.WatchEvent{
		Type: gridpb.WatchEvent_PUT, Map: mapName, Key: key, Value: e.Value, Crc: e.CRC, Expiry: e.Expiry,
	})
}

// del deletes a key and records the change. A stale expiry index entry of
// the key stays until the sweeper meets it.
func (a *kvApplier) del(tx *txn, mapName string, key []byte, typ gridpb.WatchEvent_Type) {
	tx.del(dataKey(a.group, mapName, key))
	a.events = append(a.events, &gridpb.WatchEvent{Type: typ, Map: mapName, Key: key})
}

func (a *kvApplier) applyOp(tx *txn, index uint64, cmd *gridpb.Command) (*gridpb.Result, error) {
	now := cmd.LeaderTime
	switch op := cmd.Op.(type) {
	case *gridpb.Command_Check:
		return &gridpb.Result{Ok: true, Version: index}, nil // started in apply, before the prunes
	case *gridpb.Command_Put:
		p := op.Put
		crc := Checksum(p.Value)
		if p.Crc != 0 && p.Crc != crc {
			return a.checksumMismatch(index, p.Key)
		}
		if grid.ValidateTTL(p.TtlNanos) != nil {
			return &gridpb.Result{Error: resBadTTL}, nil
		}
		if stale, err := a.checkFence(tx, p.Fence); err != nil || stale != nil {
			return stale, err
		}
		a.put(tx, index, now, p.Map, p.Key, p.Value, crc, p.TtlNanos)
		return &gridpb.Result{Ok: true, Version: index}, nil
	case *gridpb.Command_Delete:
		d := op.Delete
		if stale, err := a.checkFence(tx, d.Fence); err != nil || stale != nil {
			return stale, err
		}
		_, _, live, err := a.current(tx, index, d.Map, d.Key, now)
		if err != nil {
			return nil, fmt.Errorf("replication: delete: %w", err)
		}
		if live {
			a.del(tx, d.Map, d.Key, gridpb.WatchEvent_DELETE)
		}
		return &gridpb.Result{Ok: true, Existed: live, Version: index}, nil
	case *gridpb.Command_Cas:
		c := op.Cas
		if stale, err := a.checkFence(tx, c.Fence); err != nil || stale != nil {
			return stale, err
		}
		e, _, live, err := a.current(tx, index, c.Map, c.Key, now)
		if err != nil {
			return nil, fmt.Errorf("replication: cas: %w", err)
		}
		cur := uint64(0)
		if live {
			cur = e.Version
		}
		if cur != c.ExpectedVersion {
			return &gridpb.Result{Ok: false, Existed: cur != 0, Version: cur}, nil
		}
		if c.Delete {
			if cur != 0 {
				a.del(tx, c.Map, c.Key, gridpb.WatchEvent_DELETE)
			}
			return &gridpb.Result{Ok: true, Existed: cur != 0, Version: 0}, nil
		}
		crc := Checksum(c.Value)
		if c.Crc != 0 && c.Crc != crc {
			return a.checksumMismatch(index, c.Key)
		}
		if grid.ValidateTTL(c.TtlNanos) != nil {
			return &gridpb.Result{Error: resBadTTL}, nil
		}
		if c.KeepExpiry && live && e.Expiry != 0 {
			a.putEntry(tx, c.Map, c.Key, StoredEntry{Version: index, CRC: crc, Value: c.Value, Expiry: e.Expiry})
		} else {
			a.put(tx, index, now, c.Map, c.Key, c.Value, crc, c.TtlNanos)
		}
		return &gridpb.Result{Ok: true, Existed: cur != 0, Version: index}, nil
	case *gridpb.Command_Txn:
		return a.applyTxn(tx, index, now, op.Txn)
	case *gridpb.Command_Expire:
		return a.applyExpire(tx, index, now, op.Expire)
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
func (a *kvApplier) applyTxn(tx *txn, index uint64, now int64, t *gridpb.TxnOp) (*gridpb.Result, error) {
	if stale, err := a.checkFence(tx, t.Fence); err != nil || stale != nil {
		return stale, err
	}
	ok := true
	for _, c := range t.Compares {
		cur, _, exists, err := a.current(tx, index, t.Map, c.Key, now)
		if err != nil {
			return nil, fmt.Errorf("replication: txn: %w", err)
		}
		if !exists {
			cur = StoredEntry{}
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
	for _, w := range ops { // checked before any write: nothing applies
		if !w.Delete && w.Crc != 0 && w.Crc != Checksum(w.Value) {
			return a.checksumMismatch(index, w.Key)
		}
		if grid.ValidateTTL(w.TtlNanos) != nil {
			return &gridpb.Result{Error: resBadTTL}, nil
		}
	}
	for _, w := range ops {
		if w.Delete {
			_, _, live, err := a.current(tx, index, t.Map, w.Key, now)
			if err != nil {
				return nil, fmt.Errorf("replication: txn: %w", err)
			}
			if live {
				a.del(tx, t.Map, w.Key, gridpb.WatchEvent_DELETE)
			}
			continue
		}
		crc := w.Crc // verified above
		if crc == 0 {
			crc = Checksum(w.Value)
		}
		a.put(tx, index, now, t.Map, w.Key, w.Value, crc, w.TtlNanos)
	}
	return &gridpb.Result{Ok: ok, Version: index}, nil
}

// applyExpire deletes each listed key that still has the listed version and
// has expired as of the command's leader time, and drops expiry index
// entries that no longer match their key (rewritten or deleted since).
func (a *kvApplier) applyExpire(tx *txn, index uint64, now int64, x *gridpb.ExpireOp) (*gridpb.Result, error) {
	for _, k := range x.Keys {
		if len(k.Map) > 255 || k.Expiry <= 0 {
			continue // not something the sweeper files
		}
		e, present, _, err := a.current(tx, index, k.Map, k.Key, now)
		if err != nil {
			return nil, fmt.Errorf("replication: expire: %w", err)
		}
		if present && e.Version == k.Version {
			if !grid.Expired(e.Expiry, now) {
				continue // not due yet: keep its index entry
			}
			a.del(tx, k.Map, k.Key, gridpb.WatchEvent_EXPIRE)
		}
		tx.del(expiryKey(a.group, k.Expiry, k.Map, k.Key))
	}
	return &gridpb.Result{Ok: true, Version: index}, nil
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
	prefix := dedupTimePrefix(a.group)
	// The time index is in leader-time order: stop at the first record
	// still within the retention.
	_ = v.Iterate(prefix, nil, func(k, _ []byte) (bool, error) {
		rest := k[len(prefix):]
		if len(rest) != 24 {
			return true, nil
		}
		if int64(binary.BigEndian.Uint64(rest)) >= cutoff {
			return false, nil
		}
		tx.del(append([]byte(nil), k...))
		tx.del(dedupKey(a.group, binary.BigEndian.Uint64(rest[8:]), binary.BigEndian.Uint64(rest[16:])))
		pruned++
		return pruned < dedupPruneMax, nil
	})
}

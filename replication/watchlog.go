package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// WatchRetention bounds a data partition's change log: the records of the
// last Entries log indexes, and at most about Bytes of records (values
// included). Every replica should use the same retention: pruning is part
// of the replicated state, decided by the log index, so replicas with the
// same retention hold the same history.
type WatchRetention struct {
	Entries uint64
	Bytes   uint64
}

// DefaultWatchRetention suits servers; SmallWatchRetention a Pi Zero.
func DefaultWatchRetention() WatchRetention { return WatchRetention{Entries: 10000, Bytes: 64 << 20} }

// SmallWatchRetention keeps a short history on 512 MB machines.
func SmallWatchRetention() WatchRetention { return WatchRetention{Entries: 2000, Bytes: 8 << 20} }

// pruneStep is how far the count-based retention may lag before a prune
// runs, so that pruning costs one engine view per pruneStep indexes rather
// than one per entry.
const pruneStep = 64

// pruneMax bounds the records one command deletes, so one entry never grows
// an engine batch past its limits; the rest go with the next commands.
const pruneMax = 256

// changeLog keeps a data partition's change log: one WatchLogRecord per
// Raft index that changed a key, written in the same batch as the change,
// and pruned by the retention. Its state (pruned-through index and byte
// count) is persisted with the log; everything else is a cache. It is used
// only by the group's apply goroutine.
type changeLog struct {
	group  GroupID
	retain WatchRetention

	pruned uint64 // every record at or below this index may be gone
	bytes  uint64 // bytes of retained records
	dirty  bool   // state changed since the last flush

	// hint: no record below it remains (in the engine or the pending batch).
	hint uint64
	// pending lists records written in the unflushed batch, oldest first:
	// the engine does not see them yet, but pruning must, or the outcome
	// would depend on where batches happen to be cut.
	pending []pendingRecord
}

type pendingRecord struct {
	index uint64
	size  uint64
}

func newChangeLog(g GroupID, r WatchRetention) *changeLog {
	if r.Entries == 0 {
		r = DefaultWatchRetention()
	}
	return &changeLog{group: g, retain: r}
}

// load reads the persisted state (after start or a snapshot restore).
func (l *changeLog) load(eng Engine) error {
	raw, err := eng.Get(watchStateKey(l.group))
	switch {
	case errors.Is(err, ErrEngineNotFound):
		l.pruned, l.bytes = 0, 0
	case err != nil:
		return fmt.Errorf("replication: %s: read change log state: %w", l.group, err)
	default:
		if l.pruned, l.bytes, err = decodeWatchState(raw); err != nil {
			return fmt.Errorf("%s: %w", l.group, err)
		}
	}
	l.hint, l.pending, l.dirty = l.pruned+1, nil, false
	return nil
}

func decodeWatchState(b []byte) (pruned, bytes uint64, err error) {
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("%w: change log state has %d bytes", ErrCorrupt, len(b))
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]), nil
}

// record writes the events of the entry at index.
func (l *changeLog) record(tx *txn, index uint64, events []*gridpb.WatchEvent) {
	if len(events) == 0 {
		return
	}
	raw, err := proto.Marshal(&gridpb.WatchLogRecord{Events: events})
	if err != nil {
		return // cannot happen for these messages; a missing record is reported as a gap by no one
	}
	tx.setEarly(watchRecordKey(l.group, index), raw)
	l.pending = append(l.pending, pendingRecord{index: index, size: uint64(len(raw))})
	l.bytes += uint64(len(raw))
	l.dirty = true
}

// prune drops the oldest records beyond the retention, as of index. It
// depends only on the replicated state and index, so every replica prunes
// the same records at the same index.
func (l *changeLog) prune(tx *txn, index uint64) {
	var floor uint64 // records at or below floor go
	if index > l.retain.Entries {
		floor = index - l.retain.Entries
	}
	overCount := floor >= l.pruned+pruneStep
	if !overCount && l.bytes <= l.retain.Bytes {
		return
	}
	deleted := 0
	done := true // every record at or below floor is gone
	drop := func(idx, size uint64) bool {
		if deleted == pruneMax {
			done = false
			return false
		}
		if idx > floor && l.bytes <= l.retain.Bytes {
			return false
		}
		tx.del(watchRecordKey(l.group, idx))
		l.bytes -= min(size, l.bytes)
		l.pruned = max(l.pruned, idx)
		l.hint = idx + 1
		deleted++
		l.dirty = true
		return true
	}
	// Engine records at or beyond the first index this batch writes are
	// early writes of a batch a crash interrupted: being rewritten now.
	ceiling := index
	if len(l.pending) > 0 {
		ceiling = l.pending[0].index
	}
	stopped := false
	if v, err := tx.eng.NewView(); err == nil {
		prefix := watchStateKey(l.group)
		after := watchRecordKey(l.group, l.hint-1)
		_ = v.Iterate(prefix, after, func(k, val []byte) (bool, error) {
			if len(k) != len(prefix)+8 {
				return true, nil
			}
			if d, ok := tx.overlay[string(k)]; ok && d == nil {
				return true, nil // deleted earlier in this batch
			}
			idx := binary.BigEndian.Uint64(k[len(prefix):])
			if idx >= ceiling {
				return false, nil
			}
			if !drop(idx, uint64(len(val))) {
				stopped = true
				return false, nil
			}
			return true, nil
		})
		v.Close()
	} else {
		return
	}
	if !stopped {
		for len(l.pending) > 0 && drop(l.pending[0].index, l.pending[0].size) {
			l.pending = l.pending[1:]
		}
	}
	if done && overCount && l.pruned < floor {
		l.pruned = floor
		l.hint = floor + 1
		l.dirty = true
	}
}

// beforeFlush persists the state with the batch.
func (l *changeLog) beforeFlush(tx *txn) {
	if l.dirty {
		v := binary.BigEndian.AppendUint64(nil, l.pruned)
		tx.set(watchStateKey(l.group), binary.BigEndian.AppendUint64(v, l.bytes))
		l.dirty = false
	}
	l.pending = l.pending[:0]
}

// Change is one entry of a partition's change log.
type Change struct {
	Version uint64
	Events  []*gridpb.WatchEvent
}

// ReadChanges reads the change log from version `from` (inclusive) on a
// local view, up to about maxBytes of records. It returns the changes, the
// progress (every change up to it has been returned: the view's applied
// index, or the last change returned when the read stopped early) and the
// oldest retained version. from 0 means "from now": no changes, and the
// progress is the current applied index. A from older than the retained
// history fails with a *grid.CompactedError; a quarantined replica refuses
// (grid.ErrChecksum), since its log may lack a write.
func (g *Group) ReadChanges(from uint64, maxBytes int) (changes []Change, progress, oldest uint64, err error) {
	if err := g.corrupt.err(g.id); err != nil {
		return nil, 0, 0, err // it may lack a write: a watch must resume elsewhere
	}
	v, err := g.sm.eng.NewView()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("replication: %s: open view: %w", g.id, err)
	}
	defer v.Close()
	applied, err := readApplied(v, g.id)
	if err != nil {
		return nil, 0, 0, err
	}
	var pruned uint64
	raw, err := v.Get(watchStateKey(g.id))
	switch {
	case errors.Is(err, ErrEngineNotFound):
	case err != nil:
		return nil, 0, 0, fmt.Errorf("replication: %s: read change log state: %w", g.id, err)
	default:
		if pruned, _, err = decodeWatchState(raw); err != nil {
			return nil, 0, 0, err
		}
	}
	oldest = pruned + 1
	if from == 0 {
		return nil, applied, oldest, nil
	}
	if from <= pruned {
		return nil, 0, oldest, &grid.CompactedError{Partition: int(g.id), Requested: from, Oldest: oldest}
	}
	progress = max(applied, from-1)
	size := 0
	prefix := watchStateKey(g.id)
	err = v.Iterate(prefix, watchRecordKey(g.id, from-1), func(k, val []byte) (bool, error) {
		if len(k) != len(prefix)+8 {
			return true, nil
		}
		version := binary.BigEndian.Uint64(k[len(prefix):])
		if version > applied {
			return false, nil // written ahead of its batch (see txn.setEarly)
		}
		if len(changes) > 0 && size+len(val) > maxBytes {
			progress = changes[len(changes)-1].Version
			return false, nil
		}
		var rec gridpb.WatchLogRecord
		if err := proto.Unmarshal(val, &rec); err != nil {
			return false, fmt.Errorf("%w: %s: change log record: %v", ErrCorrupt, g.id, err)
		}
		changes = append(changes, Change{Version: version, Events: rec.Events})
		size += len(val)
		return true, nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	return changes, progress, oldest, nil
}

// Changed returns a channel closed at the next applied batch (or snapshot
// restore) of the group: a watcher reads the log, then waits on the channel
// it took before reading.
func (g *Group) Changed() <-chan struct{} { return g.sm.changed() }

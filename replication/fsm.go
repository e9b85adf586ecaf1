package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/zerogrid/zerogrid/grid"
)

// applier turns one committed command into reads and writes on a txn and
// returns the value handed back to the proposer through raft's ApplyFuture.
// It must be deterministic: it may read only the txn, the index and the
// command (which carries the leader's clock).
type applier interface {
	apply(tx *txn, index uint64, data []byte) any
	// restored is called after a snapshot replaced the group's state.
	restored(eng Engine) error
}

// flushHook is an applier that writes state of its own into each batch
// just before it is written, and hears when it was.
type flushHook interface {
	beforeFlush(tx *txn)
	afterFlush()
}

// stateMachine is the raft.BatchingFSM shared by data partitions and the
// metadata group. It owns one key prefix of the node's engine and writes the
// applied index in the same atomic batch as the data, so that after a restart
// replay skips what is already applied (the engine is durable; raft runs with
// NoSnapshotRestoreOnStart unless the prefix is known to be incomplete).
//
// Thread contract: raft calls Apply/ApplyBatch/Snapshot/Restore from one
// goroutine. Applied may be read from any goroutine.
type stateMachine struct {
	group   GroupID
	eng     Engine
	app     applier
	logger  *slog.Logger
	fatal   func(error)
	applied atomic.Uint64
	// stopped holds the first failure to write applied entries (see stop).
	stopped atomic.Pointer[error]
	// snapshots counts the snapshots raft has asked for.
	snapshots atomic.Uint64

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after each applied batch
}

var (
	_ raft.BatchingFSM = (*stateMachine)(nil)
	_ raft.FSM         = (*stateMachine)(nil)
)

func newStateMachine(group GroupID, eng Engine, app applier, logger *slog.Logger, fatal func(error)) (*stateMachine, error) {
	s := &stateMachine{group: group, eng: eng, app: app, logger: logger, fatal: fatal, notify: make(chan struct{})}
	idx, err := readApplied(eng, group)
	if err != nil {
		return nil, err
	}
	s.applied.Store(idx)
	return s, nil
}

// readApplied reads the group's applied index from the engine, or from a
// view (so that it matches what the view holds).
func readApplied(eng interface{ Get([]byte) ([]byte, error) }, g GroupID) (uint64, error) {
	b, err := eng.Get(appliedKey(g))
	if errors.Is(err, ErrEngineNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replication: read applied index of %s: %w", g, err)
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: applied index of %s has %d bytes", ErrCorrupt, g, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// needsRestore reports whether the group's engine state is incomplete: an
// interrupted snapshot restore, or state older than the newest snapshot.
func needsRestore(eng Engine, g GroupID, snapshotIndex uint64) (bool, error) {
	if _, err := eng.Get(restoringKey(g)); err == nil {
		return true, nil
	} else if !errors.Is(err, ErrEngineNotFound) {
		return false, fmt.Errorf("replication: read restore marker of %s: %w", g, err)
	}
	applied, err := readApplied(eng, g)
	if err != nil {
		return false, err
	}
	return applied < snapshotIndex, nil
}

// Applied is the index of the last log entry applied to the engine.
func (s *stateMachine) Applied() uint64 { return s.applied.Load() }

func (s *stateMachine) Apply(l *raft.Log) any { return s.ApplyBatch([]*raft.Log{l})[0] }

func (s *stateMachine) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	if err := s.stopped.Load(); err != nil {
		// A write failed before: nothing more is applied or answered as
		// applied here (the replica waits to be restarted, then replays).
		for i := range out {
			out[i] = applyResult{err: fmt.Errorf("%w: %w", grid.ErrAmbiguous, *err)}
		}
		return out
	}
	tx := newTxn(s.eng)
	last := s.applied.Load()
	pending := uint64(0) // highest index applied into tx but not yet written
	from := 0            // first entry of logs not yet written
	limit := s.eng.MaxBatchBytes()
	fail := func(err error) []any {
		s.stop(err)
		// The entries not written are answered as unknown: they are
		// committed, and a restart applies them from the log.
		for j := from; j < len(out); j++ {
			out[j] = applyResult{err: fmt.Errorf("%w: %w", grid.ErrAmbiguous, err)}
		}
		return out
	}
	var failed error
	cur := 0 // the entry being applied
	// A CheckOp needs the engine to hold every entry before it.
	tx.flushPending = func() {
		if pending != 0 && failed == nil {
			if failed = s.flush(tx, pending); failed == nil {
				pending, from = 0, cur
			}
		}
	}
	for i, l := range logs {
		cur = i
		if l.Index <= last {
			continue // replay of an entry the engine already holds
		}
		if pending != 0 && tx.batch.Size()+len(l.Data)+4096 > limit/2 {
			if err := s.flush(tx, pending); err != nil {
				return fail(err)
			}
			pending, from = 0, i
		}
		if l.Type == raft.LogCommand {
			out[i] = s.app.apply(tx, l.Index, l.Data)
		}
		if failed != nil {
			return fail(failed)
		}
		pending = l.Index
	}
	if pending != 0 {
		if err := s.flush(tx, pending); err != nil {
			return fail(err)
		}
	}
	return out
}

// stop records the first failure to write applied entries: from then on
// this state machine applies nothing, answers nothing as applied and takes
// no snapshot (a snapshot would claim entries the engine lacks), and the
// host is told, which restarts the replica from its engine and log.
func (s *stateMachine) stop(err error) {
	err = fmt.Errorf("replication: %s: stopped applying: %w", s.group, err)
	if s.stopped.CompareAndSwap(nil, &err) {
		s.logger.Error("replica stopped applying", "group", s.group.String(), "err", err)
		s.fatal(err)
	}
}

// flush writes tx with the applied index in the same batch. A batch larger
// than the engine takes in one write is committed in parts through an
// intent (see commitLarge), so flush never fails for size alone.
func (s *stateMachine) flush(tx *txn, index uint64) error {
	if h, ok := s.app.(flushHook); ok {
		h.beforeFlush(tx)
	}
	if err := s.writeEarly(tx); err != nil {
		return fmt.Errorf("write applied entries up to %d: %w", index, err)
	}
	tx.batch.Set(appliedKey(s.group), binary.BigEndian.AppendUint64(nil, index))
	if tx.batch.Size() > s.eng.MaxBatchBytes() {
		if err := commitLarge(s.eng, s.group, index, &tx.batch); err != nil {
			return fmt.Errorf("write applied entries up to %d in parts: %w", index, err)
		}
	} else if err := s.eng.Write(context.Background(), &tx.batch); err != nil {
		return fmt.Errorf("write applied entries up to %d: %w", index, err)
	}
	if h, ok := s.app.(flushHook); ok {
		h.afterFlush()
	}
	s.applied.Store(index)
	tx.reset()
	s.wake()
	return nil
}

// writeEarly puts tx's early ops into its batch when they fit, and
// otherwise writes them first, in batches of their own. Early ops are
// idempotent and invisible to readers until the applied index passes them
// (change-log records), so a crash between the two writes only leaves
// records that replaying the same entries writes again.
func (s *stateMachine) writeEarly(tx *txn) error {
	if tx.early.Len() == 0 {
		return nil
	}
	limit := s.eng.MaxBatchBytes()
	if tx.batch.Size()+tx.early.Size()+opOverhead+64 <= limit {
		// Early ops go first, as when they are written apart: a later op
		// of the batch (a change-log prune) may delete what they set.
		b := tx.early
		for _, op := range tx.batch.Ops {
			if op.Delete {
				b.Del(op.Key)
			} else {
				b.Set(op.Key, op.Value)
			}
		}
		tx.batch, tx.early = b, Batch{}
		return nil
	}
	return chunked(context.Background(), s.eng, tx.early.Ops)
}

// changed returns the channel the next applied batch closes.
func (s *stateMachine) changed() <-chan struct{} {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	return s.notify
}

func (s *stateMachine) wake() {
	s.notifyMu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.notifyMu.Unlock()
}

// Snapshot captures a read view; raft persists it on another goroutine.
func (s *stateMachine) Snapshot() (raft.FSMSnapshot, error) {
	s.snapshots.Add(1)
	if err := s.stopped.Load(); err != nil {
		return nil, *err
	}
	v, err := s.eng.NewView()
	if err != nil {
		return nil, fmt.Errorf("replication: %s: open snapshot view: %w", s.group, err)
	}
	return &fsmSnapshot{group: s.group, view: v, eng: s.eng}, nil
}

// Snapshot stream format:
//
//	magic, then records  klen(u32) key-suffix vlen(u32) value,
//	then the end mark 0xFFFFFFFF, the record count (u64) and the CRC32C (u32)
//	of every byte before the CRC.
var snapshotMagic = []byte("ZGSNAP1\n")

const snapshotEnd = 0xFFFFFFFF

type fsmSnapshot struct {
	group GroupID
	view  View
	eng   Engine
}

func (f *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := f.write(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	// The engine must durably hold everything up to the snapshot's index
	// before raft may compact the log behind it.
	if err := f.eng.Sync(); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("replication: %s: sync engine before snapshot completes: %w", f.group, err)
	}
	return sink.Close()
}

func (f *fsmSnapshot) write(w io.Writer) error {
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 64<<10)
	prefix := groupPrefix(f.group)
	if _, err := bw.Write(snapshotMagic); err != nil {
		return fmt.Errorf("replication: %s: write snapshot: %w", f.group, err)
	}
	var n uint64
	var hdr [4]byte
	err := f.view.Iterate(prefix, nil, func(k, v []byte) (bool, error) {
		suffix := k[len(prefix):]
		if len(suffix) > 0 && suffix[0] == subIntegrity {
			return true, nil // this replica's own records (quarantine), never shipped
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(suffix)))
		bw.Write(hdr[:])
		bw.Write(suffix)
		binary.BigEndian.PutUint32(hdr[:], uint32(len(v)))
		bw.Write(hdr[:])
		_, err := bw.Write(v)
		n++
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("replication: %s: write snapshot: %w", f.group, err)
	}
	var tail [12]byte
	binary.BigEndian.PutUint32(tail[:4], snapshotEnd)
	binary.BigEndian.PutUint64(tail[4:], n)
	bw.Write(tail[:])
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("replication: %s: write snapshot: %w", f.group, err)
	}
	binary.BigEndian.PutUint32(hdr[:], crc.Sum32())
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("replication: %s: write snapshot: %w", f.group, err)
	}
	return nil
}

func (f *fsmSnapshot) Release() { f.view.Close() }

// Restore replaces the group's prefix with the snapshot's content. A marker
// outside the prefix makes an interrupted restore visible after a crash, so
// the next start restores again instead of trusting half a state.
func (s *stateMachine) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	ctx := context.Background()
	var mark Batch
	mark.Set(restoringKey(s.group), []byte{1})
	if err := s.eng.Write(ctx, &mark); err != nil {
		return fmt.Errorf("replication: %s: mark restore: %w", s.group, err)
	}
	prefix := groupPrefix(s.group)
	if err := s.eng.DropPrefix(ctx, prefix); err != nil {
		return fmt.Errorf("replication: %s: drop state before restore: %w", s.group, err)
	}
	if err := s.load(ctx, rc, prefix); err != nil {
		return err
	}
	var done Batch
	done.Del(restoringKey(s.group))
	if err := s.eng.Write(ctx, &done); err != nil {
		return fmt.Errorf("replication: %s: clear restore mark: %w", s.group, err)
	}
	if err := s.eng.Sync(); err != nil {
		return fmt.Errorf("replication: %s: sync after restore: %w", s.group, err)
	}
	idx, err := readApplied(s.eng, s.group)
	if err != nil {
		return err
	}
	s.applied.Store(idx)
	defer s.wake()
	return s.app.restored(s.eng)
}

func (s *stateMachine) load(ctx context.Context, r io.Reader, prefix []byte) error {
	crc := crc32.New(castagnoli)
	br := &crcReader{r: bufio.NewReaderSize(r, 64<<10), crc: crc}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadSnapshot, s.group, fmt.Sprintf(format, args...))
	}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != string(snapshotMagic) {
		return bad("missing header")
	}
	var b Batch
	limit := s.eng.MaxBatchBytes() / 2
	var n uint64
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return bad("truncated after %d records", n)
		}
		klen := binary.BigEndian.Uint32(hdr[:])
		if klen == snapshotEnd {
			break
		}
		if klen > 1<<20 {
			return bad("key length %d", klen)
		}
		key := make([]byte, len(prefix)+int(klen))
		copy(key, prefix)
		if _, err := io.ReadFull(br, key[len(prefix):]); err != nil {
			return bad("truncated key")
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return bad("truncated value length")
		}
		vlen := binary.BigEndian.Uint32(hdr[:])
		if vlen > 256<<20 {
			return bad("value length %d", vlen)
		}
		val := make([]byte, vlen)
		if _, err := io.ReadFull(br, val); err != nil {
			return bad("truncated value")
		}
		if b.Size()+len(key)+len(val)+opOverhead > limit && b.Len() > 0 {
			if err := s.eng.Write(ctx, &b); err != nil {
				return fmt.Errorf("replication: %s: restore write: %w", s.group, err)
			}
			b = Batch{}
		}
		b.Set(key, val)
		n++
	}
	var count [8]byte
	if _, err := io.ReadFull(br, count[:]); err != nil {
		return bad("truncated trailer")
	}
	want := crc.Sum32()
	if _, err := io.ReadFull(br.r, hdr[:]); err != nil {
		return bad("missing checksum")
	}
	if got := binary.BigEndian.Uint32(hdr[:]); got != want {
		return bad("checksum %08x, computed %08x", got, want)
	}
	if c := binary.BigEndian.Uint64(count[:]); c != n {
		return bad("%d records, trailer says %d", n, c)
	}
	if b.Len() > 0 {
		if err := s.eng.Write(ctx, &b); err != nil {
			return fmt.Errorf("replication: %s: restore write: %w", s.group, err)
		}
	}
	return nil
}

type crcReader struct {
	r   *bufio.Reader
	crc hash.Hash32
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc.Write(p[:n])
	return n, err
}

// txn is one ApplyBatch's pending writes with read-your-writes over the engine.
type txn struct {
	eng     Engine
	batch   Batch
	early   Batch              // sets that may be written before batch (see writeEarly)
	overlay map[string]*[]byte // nil pointer: deleted in this txn
	// flushPending writes the entries applied so far in this batch, so the
	// engine holds the state as of the entry being applied.
	flushPending func()
}

func newTxn(eng Engine) *txn {
	return &txn{eng: eng, overlay: map[string]*[]byte{}, flushPending: func() {}}
}

func (t *txn) get(key []byte) ([]byte, error) {
	if v, ok := t.overlay[string(key)]; ok {
		if v == nil {
			return nil, ErrEngineNotFound
		}
		return *v, nil
	}
	return t.eng.Get(key)
}

func (t *txn) set(key, value []byte) {
	t.batch.Set(key, value)
	t.overlay[string(key)] = &value
}

// setEarly is set for a key that no reader looks at until the applied
// index covers it, so it may reach the engine before the rest of the batch:
// the change log's records, which carry a copy of each value and would
// otherwise make a batch with a large value twice too big for the engine.
func (t *txn) setEarly(key, value []byte) {
	t.early.Set(key, value)
	t.overlay[string(key)] = &value
}

func (t *txn) del(key []byte) {
	t.batch.Del(key)
	t.overlay[string(key)] = nil
}

func (t *txn) reset() {
	t.batch = Batch{}
	t.early = Batch{}
	clear(t.overlay)
}

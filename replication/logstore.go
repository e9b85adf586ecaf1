package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// logDB is the node's one Raft log store, shared by every group on it: each
// group's log entries and stable state (term, vote) live in buckets of their
// own in one bbolt file, and every write goes through one committer that
// puts the appends of all groups waiting at that moment — leaders' own
// appends and followers' AppendEntries alike — into one transaction: one
// write of the changed pages and bbolt's two syncs (data pages, then the
// meta page). A write is acknowledged only after its transaction commits.
// Compacting a group deletes keys of its bucket and dropping a group
// deletes its buckets; the other groups' pages are not rewritten.
//
// Every record carries a CRC32C. A record failing it is reported to its
// group alone (the group quarantines its replica); bbolt's meta pages
// guard the file as a whole, so a torn commit is rolled back at open.
//
// Thread contract: every method is safe for concurrent use. One goroutine,
// owned by the logDB and stopped by Close, runs the commits.
type logDB struct {
	db   *bbolt.DB
	reqs chan *logWrite
	stop chan struct{}
	done chan struct{}

	commits atomic.Uint64 // transactions committed
	writes  atomic.Uint64 // writes those transactions carried
}

// logWrite is one caller's part of a commit.
type logWrite struct {
	fn   func(tx *bbolt.Tx) error
	done chan error
}

// maxCommitWrites bounds the writes one transaction carries.
const maxCommitWrites = 512

func openLogDB(path string) (*logDB, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("replication: open raft log store %s: %w", path, err)
	}
	s := &logDB{db: db, reqs: make(chan *logWrite, maxCommitWrites), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s, nil
}

// run commits what is waiting, then waits for more: while one commit
// syncs, the writes that arrive queue up for the next.
func (s *logDB) run() {
	defer close(s.done)
	batch := make([]*logWrite, 0, maxCommitWrites)
	for {
		select {
		case <-s.stop:
			return
		case w := <-s.reqs:
			batch = append(batch[:0], w)
		}
	more:
		for len(batch) < maxCommitWrites {
			select {
			case w := <-s.reqs:
				batch = append(batch, w)
			default:
				break more
			}
		}
		s.commit(batch)
	}
}

// commit runs batch in one transaction. If one write fails, the
// transaction is rolled back and each write is run in one of its own, so
// that a bad write fails alone.
func (s *logDB) commit(batch []*logWrite) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, w := range batch {
			if err := w.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(batch) == 1 {
		s.commits.Add(1)
		s.writes.Add(uint64(len(batch)))
		for _, w := range batch {
			w.done <- err
		}
		return
	}
	for _, w := range batch {
		s.commit([]*logWrite{w})
	}
}

var errLogStoreClosed = errors.New("replication: raft log store closed")

// update runs fn in a shared transaction and returns once it is synced.
func (s *logDB) update(fn func(tx *bbolt.Tx) error) error {
	w := &logWrite{fn: fn, done: make(chan error, 1)}
	select {
	case s.reqs <- w:
	case <-s.done:
		return errLogStoreClosed
	}
	select {
	case err := <-w.done:
		return err
	case <-s.done:
		return errLogStoreClosed
	}
}

// Close stops the committer (after the commit in progress) and closes the file.
func (s *logDB) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	<-s.done
	return s.db.Close()
}

// logStats are the store's counters: transactions committed, and the
// writes (appends, deletes, stable-state sets) they carried.
type logStats struct{ Commits, Writes uint64 }

func (s *logDB) stats() logStats {
	return logStats{Commits: s.commits.Load(), Writes: s.writes.Load()}
}

func logBucket(g GroupID) []byte    { return binary.BigEndian.AppendUint32([]byte{'l'}, uint32(g)) }
func stableBucket(g GroupID) []byte { return binary.BigEndian.AppendUint32([]byte{'s'}, uint32(g)) }

// dropGroup deletes everything of group g.
func (s *logDB) dropGroup(g GroupID) error {
	return s.update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{logBucket(g), stableBucket(g)} {
			if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, bbolt.ErrBucketNotFound) {
				return err
			}
		}
		return nil
	})
}

// verifyGroup checks the CRC32C of group g's stable state and of its log
// entries from index from on, and describes the first that fails ("" when
// all pass).
func (s *logDB) verifyGroup(g GroupID, from uint64) (string, error) {
	bad := ""
	err := s.db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(stableBucket(g)); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				if _, err := openRecord(v); err != nil {
					bad = fmt.Sprintf("raft state %q: %v", k, err)
					return errStopScan
				}
				return nil
			}); err != nil {
				return err
			}
		}
		b := tx.Bucket(logBucket(g))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, from)); k != nil; k, v = c.Next() {
			if _, err := openRecord(v); err != nil {
				bad = fmt.Sprintf("raft log entry %d: %v", binary.BigEndian.Uint64(k), err)
				return errStopScan
			}
		}
		return nil
	})
	if errors.Is(err, errStopScan) {
		err = nil
	}
	return bad, err
}

var errStopScan = errors.New("stop")

// groupLog is one group's raft.LogStore and raft.StableStore in the shared store.
type groupLog struct {
	s       *logDB
	g       GroupID
	logs    []byte
	stable  []byte
	corrupt func(reason string)
	// appendedBytes and appendedEntries count what StoreLogs wrote since
	// the group opened (retention.go reads them); once appendedBytes
	// reaches kickAt (0: never), kick is called (it must not block).
	appendedBytes, appendedEntries atomic.Int64
	kickAt                         atomic.Int64
	kick                           func()
}

var (
	_ raft.LogStore    = (*groupLog)(nil)
	_ raft.StableStore = (*groupLog)(nil)
)

func (s *logDB) group(g GroupID, corrupt func(string)) *groupLog {
	if corrupt == nil {
		corrupt = func(string) {}
	}
	return &groupLog{s: s, g: g, logs: logBucket(g), stable: stableBucket(g), corrupt: corrupt}
}

// Close does nothing: the store outlives its groups (Host.Close closes it).
func (l *groupLog) Close() error { return nil }

func (l *groupLog) edge(last bool) (uint64, error) {
	var idx uint64
	err := l.s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(l.logs)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, _ := c.First()
		if last {
			k, _ = c.Last()
		}
		if len(k) == 8 {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

func (l *groupLog) FirstIndex() (uint64, error) { return l.edge(false) }
func (l *groupLog) LastIndex() (uint64, error)  { return l.edge(true) }

func (l *groupLog) GetLog(index uint64, out *raft.Log) error {
	var val []byte
	err := l.s.db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(l.logs); b != nil {
			if v := b.Get(binary.BigEndian.AppendUint64(nil, index)); v != nil {
				val = bytes.Clone(v)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: %s: read raft log entry %d: %w", l.g, index, err)
	}
	if val == nil {
		return raft.ErrLogNotFound
	}
	if err := decodeLog(val, out); err != nil {
		l.corrupt(fmt.Sprintf("raft log entry %d: %v", index, err))
		return fmt.Errorf("replication: %s: raft log entry %d: %w", l.g, index, err)
	}
	if out.Index != index {
		l.corrupt(fmt.Sprintf("raft log entry %d holds index %d", index, out.Index))
		return fmt.Errorf("%w: %s: raft log entry %d holds index %d", ErrCorrupt, l.g, index, out.Index)
	}
	return nil
}

func (l *groupLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

func (l *groupLog) StoreLogs(logs []*raft.Log) error {
	recs := make([][]byte, len(logs))
	for i, log := range logs {
		recs[i] = encodeLog(log)
	}
	var size int64
	for _, r := range recs {
		size += int64(len(r))
	}
	err := l.s.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(l.logs)
		if err != nil {
			return err
		}
		for i, log := range logs {
			if err := b.Put(binary.BigEndian.AppendUint64(nil, log.Index), recs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: %s: store %d raft log entries: %w", l.g, len(logs), err)
	}
	total := l.appendedBytes.Add(size)
	l.appendedEntries.Add(int64(len(logs)))
	if k := l.kickAt.Load(); k > 0 && total >= k && l.kick != nil {
		l.kick()
	}
	return nil
}

func (l *groupLog) DeleteRange(min, max uint64) error {
	err := l.s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(l.logs)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, _ := c.Seek(binary.BigEndian.AppendUint64(nil, min)); k != nil; k, _ = c.Seek(binary.BigEndian.AppendUint64(nil, min)) {
			idx := binary.BigEndian.Uint64(k)
			if idx > max {
				return nil
			}
			if err := c.Delete(); err != nil {
				return err
			}
			min = idx + 1
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: %s: delete raft log entries %d..%d: %w", l.g, min, max, err)
	}
	return nil
}

// errStableNotFound must read "not found": hashicorp/raft tells a missing
// key from a failure by that text (as raft-boltdb's ErrKeyNotFound reads).
var errStableNotFound = errors.New("not found")

func (l *groupLog) Set(key, val []byte) error {
	rec := sealRecord(val)
	err := l.s.update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(l.stable)
		if err != nil {
			return err
		}
		return b.Put(key, rec)
	})
	if err != nil {
		return fmt.Errorf("replication: %s: store raft state %q: %w", l.g, key, err)
	}
	return nil
}

func (l *groupLog) Get(key []byte) ([]byte, error) {
	var val []byte
	err := l.s.db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(l.stable); b != nil {
			if v := b.Get(key); v != nil {
				val = bytes.Clone(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("replication: %s: read raft state %q: %w", l.g, key, err)
	}
	if val == nil {
		return nil, errStableNotFound
	}
	v, err := openRecord(val)
	if err != nil {
		l.corrupt(fmt.Sprintf("raft state %q: %v", key, err))
		return nil, fmt.Errorf("replication: %s: raft state %q: %w", l.g, key, err)
	}
	return v, nil
}

func (l *groupLog) SetUint64(key []byte, val uint64) error {
	return l.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

func (l *groupLog) GetUint64(key []byte) (uint64, error) {
	v, err := l.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: %s: raft state %q has %d bytes", ErrCorrupt, l.g, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// sealRecord prefixes b with its CRC32C; openRecord checks and strips it.
func sealRecord(b []byte) []byte {
	out := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(out, crc32.Checksum(b, castagnoli))
	return append(out, b...)
}

func openRecord(rec []byte) ([]byte, error) {
	if len(rec) < 4 {
		return nil, fmt.Errorf("%w: record of %d bytes", ErrCorrupt, len(rec))
	}
	if got, want := crc32.Checksum(rec[4:], castagnoli), binary.BigEndian.Uint32(rec); got != want {
		return nil, fmt.Errorf("%w: record fails its CRC32C (%08x, stored %08x)", ErrCorrupt, got, want)
	}
	return rec[4:], nil
}

// Log record: crc(u32) index(u64) term(u64) type(u8) appendedAt(i64 unix ns)
// len(data)(u32) data len(extensions)(u32) extensions.
func encodeLog(l *raft.Log) []byte {
	b := make([]byte, 0, 4+8+8+1+8+4+len(l.Data)+4+len(l.Extensions))
	b = append(b, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, l.Index)
	b = binary.BigEndian.AppendUint64(b, l.Term)
	b = append(b, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Extensions)))
	b = append(b, l.Extensions...)
	binary.BigEndian.PutUint32(b, crc32.Checksum(b[4:], castagnoli))
	return b
}

func decodeLog(rec []byte, l *raft.Log) error {
	b, err := openRecord(rec)
	if err != nil {
		return err
	}
	const head = 8 + 8 + 1 + 8 + 4
	if len(b) < head {
		return fmt.Errorf("%w: log record of %d bytes", ErrCorrupt, len(b))
	}
	l.Index = binary.BigEndian.Uint64(b)
	l.Term = binary.BigEndian.Uint64(b[8:])
	l.Type = raft.LogType(b[16])
	l.AppendedAt = time.Time{}
	if at := int64(binary.BigEndian.Uint64(b[17:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	}
	n := int(binary.BigEndian.Uint32(b[25:]))
	rest := b[head:]
	if n > len(rest)-4 {
		return fmt.Errorf("%w: log record data of %d bytes in %d", ErrCorrupt, n, len(rest))
	}
	l.Data = rest[:n:n]
	rest = rest[n:]
	m := int(binary.BigEndian.Uint32(rest))
	if m != len(rest)-4 {
		return fmt.Errorf("%w: log record extensions of %d bytes in %d", ErrCorrupt, m, len(rest)-4)
	}
	l.Extensions = nil
	if m > 0 {
		l.Extensions = rest[4:]
	}
	return nil
}

// importGroup copies a group's log and stable state from src (an older
// per-group store) into the shared store, replacing what it held of g.
func (s *logDB) importGroup(ctx context.Context, g GroupID, src interface {
	raft.LogStore
	raft.StableStore
}) error {
	if err := s.dropGroup(g); err != nil {
		return err
	}
	dst := s.group(g, nil)
	for _, key := range [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")} {
		v, err := src.Get(key)
		if err != nil {
			continue // never set
		}
		if err := dst.Set(key, v); err != nil {
			return err
		}
	}
	first, err := src.FirstIndex()
	if err != nil {
		return err
	}
	last, err := src.LastIndex()
	if err != nil {
		return err
	}
	var batch []*raft.Log
	size := 0
	for i := first; first > 0 && i <= last; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		l := new(raft.Log)
		if err := src.GetLog(i, l); err != nil {
			return fmt.Errorf("read entry %d: %w", i, err)
		}
		batch = append(batch, l)
		size += len(l.Data)
		if len(batch) >= 256 || size >= 4<<20 {
			if err := dst.StoreLogs(batch); err != nil {
				return err
			}
			batch, size = nil, 0
		}
	}
	if len(batch) > 0 {
		return dst.StoreLogs(batch)
	}
	return nil
}

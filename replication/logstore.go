package replication

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// logDB is the node's one Raft log store, shared by every group on it: an
// append-only log of segment files in one directory holding every group's
// entries and stable state (term, vote). Every write goes through one
// committer that appends the records of all writes waiting at that moment
// — leaders' own appends and followers' AppendEntries alike, at most one
// write per group — in one write and one fdatasync, and acknowledges them
// only after the sync. Segments are written with zeros when they start, so
// that a sync flushes data alone, not the file's growth. An index in memory
// maps each group's entries to their place on disk; reads are preads.
//
// Compacting a group's prefix and dropping a group append one small
// record; a segment file is deleted once no group has live records in it.
// A quiet group that keeps the oldest segment alive while the others have
// moved on is copied forward (its live records appended again) when dead
// records outweigh live ones, so disk use follows what the groups hold.
//
// Every record has a header with its own CRC32C (length, kind, group,
// index) and a body with another. At open the segments are read in order:
// a record cut short or with a bad header in the last segment is a torn
// tail and is cut off; a damaged body is blamed on the group its header
// names (that group alone is quarantined); records that do not follow on
// (lost ones) blame their group too.
//
// Thread contract: every method is safe for concurrent use. One goroutine,
// owned by the logDB and stopped by Close, runs the commits; it is the only
// writer of the index (under mu), readers hold mu shared while they read.
type logDB struct {
	dir      string
	segBytes int64 // size past which a new segment is started
	reqs     chan *logWrite
	stop     chan struct{}
	done     chan struct{}

	mu     sync.RWMutex
	segs   map[uint64]*segment // by sequence number
	groups map[GroupID]*groupState
	active *segment // the segment appended to; only the committer changes it
	live   int64    // bytes of live records, all groups

	commits atomic.Uint64 // writes to disk (each one sync)
	syncs   latencies
	writes  atomic.Uint64 // caller writes those carried
}

// segment is one file of the log.
type segment struct {
	seq  uint64
	f    *os.File
	size int64
}

// groupState is one group's part of the index.
type groupState struct {
	first  uint64   // index of locs[0]
	locs   []recLoc // entries first, first+1, ...
	stable map[string]stableVal
	// lost describes records found missing at open ("" if none): the
	// group's log cannot be trusted.
	lost string
}

func (st *groupState) last() uint64 {
	if len(st.locs) == 0 {
		return 0
	}
	return st.first + uint64(len(st.locs)) - 1
}

// oldestSeg is the oldest segment holding a live record of the group.
func (st *groupState) oldestSeg() uint64 {
	oldest := uint64(1<<64 - 1)
	if len(st.locs) > 0 {
		oldest = st.locs[0].seg // appended in order: the first is the oldest
	}
	for _, v := range st.stable {
		oldest = min(oldest, v.loc.seg)
	}
	return oldest
}

// recLoc is where a record's body lies.
type recLoc struct {
	seg uint64
	off int64
	n   uint32
	bad bool // the body failed its CRC at open
}

type stableVal struct {
	loc recLoc
	val []byte
}

// Record kinds.
const (
	recEntry  byte = 1 // index: the entry's; body: encodeLog
	recDelete byte = 2 // index: min; body: sealed max (u64)
	recSet    byte = 3 // index: 0; body: sealed key length (u16), key, value
	recReset  byte = 4 // the group is dropped: everything of it before is dead; body: sealed nothing
)

// Record header: body length (u32), kind (u8), group (u32), index (u64),
// CRC32C of those (u32). The body starts with its own CRC32C.
const recHeaderSize = 4 + 1 + 4 + 8 + 4

// Segment file header: magic, sequence number.
const (
	segMagic      = "ZGRLOG1\n"
	segHeaderSize = 8 + 8
)

// segmentBytes is the size past which the committer starts a new segment.
const segmentBytes = 8 << 20

// preallocMargin is the free space, beyond a few segments, below which a
// new segment is not preallocated.
const preallocMargin = 64 << 20

// maxRecordBody bounds a record's body (a sane-length check at open).
const maxRecordBody = MaxRaftMessageBytes

// maxCommitWrites bounds the writes one commit carries.
const maxCommitWrites = 512

// logWrite is one caller's part of a commit: build appends its records to
// the batch, reading the index as it stands (the committer's own).
type logWrite struct {
	g     GroupID
	build func(b *logBatch) error
	done  chan error
}

// logBatch collects the records of one commit.
type logBatch struct {
	s    *logDB
	buf  []byte
	recs []pendingRec
}

type pendingRec struct {
	kind  byte
	g     GroupID
	index uint64
	off   int // of the body in buf
	n     int
}

func (b *logBatch) add(kind byte, g GroupID, index uint64, body []byte) {
	var h [recHeaderSize]byte
	binary.BigEndian.PutUint32(h[0:], uint32(len(body)))
	h[4] = kind
	binary.BigEndian.PutUint32(h[5:], uint32(g))
	binary.BigEndian.PutUint64(h[9:], index)
	binary.BigEndian.PutUint32(h[17:], crc32.Checksum(h[:17], castagnoli))
	b.buf = append(b.buf, h[:]...)
	b.recs = append(b.recs, pendingRec{kind: kind, g: g, index: index, off: len(b.buf), n: len(body)})
	b.buf = append(b.buf, body...)
}

// segName is the file name of segment seq.
func segName(seq uint64) string { return fmt.Sprintf("%016x.log", seq) }

func openLogDB(dir string) (*logDB, error) { return openLogDBSized(dir, segmentBytes) }

func openLogDBSized(dir string, segBytes int64) (*logDB, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("replication: raft log directory: %w", err)
	}
	s := &logDB{dir: dir, segBytes: segBytes, reqs: make(chan *logWrite, maxCommitWrites), stop: make(chan struct{}), done: make(chan struct{}),
		segs: map[uint64]*segment{}, groups: map[GroupID]*groupState{}}
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, err
	}
	go s.run()
	return s, nil
}

// load opens the segments and rebuilds the index from them.
func (s *logDB) load() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("replication: read raft log directory: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		var seq uint64
		if n, _ := fmt.Sscanf(e.Name(), "%016x.log", &seq); n == 1 && e.Name() == segName(seq) {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for i, seq := range seqs {
		if err := s.replay(seq, i == len(seqs)-1); err != nil {
			return err
		}
	}
	if s.active == nil {
		next := uint64(1)
		if len(seqs) > 0 {
			next = seqs[len(seqs)-1] + 1
		}
		if err := s.rotate(next); err != nil {
			return err
		}
	}
	return nil
}

// replay reads segment seq into the index. In the last segment, a record
// cut short or with a bad header is a torn write and the file is cut there.
func (s *logDB) replay(seq uint64, last bool) error {
	path := filepath.Join(s.dir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("replication: open raft log segment: %w", err)
	}
	seg := &segment{seq: seq, f: f}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("replication: raft log segment %s: %w", path, err)
	}
	var head [segHeaderSize]byte
	if _, err := f.ReadAt(head[:], 0); err != nil || string(head[:8]) != segMagic || binary.BigEndian.Uint64(head[8:]) != seq {
		f.Close()
		if last && fi.Size() <= segHeaderSize {
			// Created, never written: a crash while it was started.
			return os.Remove(path)
		}
		return fmt.Errorf("%w: raft log segment %s has a bad header", ErrCorrupt, path)
	}
	s.segs[seq] = seg
	r := bufio.NewReaderSize(io.NewSectionReader(f, segHeaderSize, fi.Size()-segHeaderSize), 1<<20)
	off := int64(segHeaderSize)
	var h [recHeaderSize]byte
	var body []byte
	inSeg := map[GroupID]bool{}
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			if err == io.EOF {
				break
			}
			return s.brokenAt(seg, off, last, inSeg, "a record header cut short")
		}
		n := binary.BigEndian.Uint32(h[0:])
		if crc32.Checksum(h[:17], castagnoli) != binary.BigEndian.Uint32(h[17:]) || n > maxRecordBody || n < 4 {
			return s.brokenAt(seg, off, last, inSeg, "a record header fails its CRC32C")
		}
		kind, g, index := h[4], GroupID(binary.BigEndian.Uint32(h[5:])), binary.BigEndian.Uint64(h[9:])
		body = slices.Grow(body[:0], int(n))[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return s.brokenAt(seg, off, last, inSeg, "a record cut short")
		}
		loc := recLoc{seg: seq, off: off + recHeaderSize, n: n}
		_, cerr := openRecord(body)
		if cerr != nil && last && endsAt(r, off+recHeaderSize+int64(n), fi.Size()) {
			// The last record, damaged: torn as it was written.
			return s.cut(seg, off)
		}
		loc.bad = cerr != nil
		inSeg[g] = true
		s.apply(kind, g, index, loc, body)
		off += recHeaderSize + int64(n)
	}
	seg.size = off
	if last {
		s.active = seg
	}
	return nil
}

// endsAt tells whether nothing follows a record ending at end: the file
// ends there, or the preallocated zeros start.
func endsAt(r *bufio.Reader, end, size int64) bool {
	if end >= size {
		return true
	}
	next, _ := r.Peek(recHeaderSize)
	for _, c := range next {
		if c != 0 {
			return false
		}
	}
	return true
}

// brokenAt handles a segment whose records cannot be followed past off: the
// last one is cut there (a torn write); in an older one, the records after
// off are lost, and every group with records in it is blamed.
func (s *logDB) brokenAt(seg *segment, off int64, last bool, inSeg map[GroupID]bool, what string) error {
	if last {
		return s.cut(seg, off)
	}
	for g := range inSeg {
		s.state(g).blame(fmt.Sprintf("raft log segment %s: %s at offset %d; what follows it is lost", segName(seg.seq), what, off))
	}
	seg.size = off
	return nil
}

// cut zeroes the last segment from off on (what a torn write left there,
// and the preallocated rest) and makes it the active one.
func (s *logDB) cut(seg *segment, off int64) error {
	err := seg.f.Truncate(off)
	if err == nil {
		err = s.preallocate(seg.f, off)
	}
	if err == nil {
		err = seg.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("replication: cut torn tail of raft log segment %s: %w", segName(seg.seq), err)
	}
	seg.size = off
	s.active = seg
	return nil
}

func (s *logDB) state(g GroupID) *groupState {
	st := s.groups[g]
	if st == nil {
		st = &groupState{stable: map[string]stableVal{}}
		s.groups[g] = st
	}
	return st
}

func (st *groupState) blame(reason string) {
	if st.lost == "" {
		st.lost = reason
	}
}

// apply applies one record to the index: at open, in the order the
// segments hold them, and after each commit, in the order written. The
// caller holds mu (or is load, alone).
func (s *logDB) apply(kind byte, g GroupID, index uint64, loc recLoc, body []byte) {
	switch kind {
	case recEntry:
		st := s.state(g)
		switch last := st.last(); {
		case len(st.locs) == 0:
			st.first = index
		case index != last+1:
			st.blame(fmt.Sprintf("raft log entry %d follows entry %d: entries are lost", index, last))
			s.live -= st.liveBytes(0, len(st.locs))
			st.first, st.locs = index, st.locs[:0]
		}
		st.locs = append(st.locs, loc)
		s.live += recHeaderSize + int64(loc.n)
	case recDelete:
		st := s.groups[g]
		if st == nil || len(st.locs) == 0 {
			return
		}
		hi := uint64(0)
		if v, err := openRecord(body); err == nil && len(v) == 8 {
			hi = binary.BigEndian.Uint64(v)
		} else {
			st.blame(fmt.Sprintf("a raft log delete record of entries from %d is damaged", index))
			return
		}
		lo, first, last := index, st.first, st.last()
		lo, hi = max(lo, first), min(hi, last)
		switch {
		case lo > hi:
		case lo == first:
			k := int(hi - first + 1)
			s.live -= st.liveBytes(0, k)
			st.locs = st.locs[k:]
			st.first = hi + 1
			if len(st.locs) == 0 {
				st.locs = nil
			}
		case hi == last:
			k := int(lo - first)
			s.live -= st.liveBytes(k, len(st.locs))
			st.locs = st.locs[:k]
		default:
			st.blame(fmt.Sprintf("a raft log delete record of entries %d..%d inside the log", lo, hi))
		}
	case recSet:
		st := s.state(g)
		v := stableVal{loc: loc}
		if val, err := openRecord(body); err == nil && len(val) >= 2 && int(binary.BigEndian.Uint16(val)) <= len(val)-2 {
			k := int(binary.BigEndian.Uint16(val))
			key := string(val[2 : 2+k])
			v.val = slices.Clone(val[2+k:])
			if old, ok := st.stable[key]; ok {
				s.live -= recHeaderSize + int64(old.loc.n)
			}
			st.stable[key] = v
			s.live += recHeaderSize + int64(loc.n)
		} else {
			st.blame("a raft state record is damaged")
		}
	case recReset:
		if st := s.groups[g]; st != nil {
			s.live -= st.liveBytes(0, len(st.locs))
			for _, v := range st.stable {
				s.live -= recHeaderSize + int64(v.loc.n)
			}
			delete(s.groups, g)
		}
	default:
		s.state(g).blame(fmt.Sprintf("a raft log record of unknown kind %d", kind))
	}
}

func (st *groupState) liveBytes(from, to int) int64 {
	var n int64
	for _, l := range st.locs[from:to] {
		n += recHeaderSize + int64(l.n)
	}
	return n
}

// rotate starts segment seq, its space written with zeros beforehand (so
// that a commit's fdatasync writes data only, not the file's size) unless
// the disk is nearly full (filling it would take what the node's other
// files need, badger's mapped ones among them), and makes it the active one. The segment it follows is cut to its records
// first: only the last segment has zeros after them.
func (s *logDB) rotate(seq uint64) error {
	if old := s.active; old != nil {
		err := old.f.Truncate(old.size)
		if err == nil {
			err = old.f.Sync()
		}
		if err != nil {
			return fmt.Errorf("replication: finish raft log segment %s: %w", segName(old.seq), err)
		}
	}
	path := filepath.Join(s.dir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replication: create raft log segment: %w", err)
	}
	head := binary.BigEndian.AppendUint64([]byte(segMagic), seq)
	if _, err = f.WriteAt(head, 0); err == nil {
		err = s.preallocate(f, segHeaderSize)
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("replication: start raft log segment %s: %w", path, err)
	}
	seg := &segment{seq: seq, f: f, size: segHeaderSize}
	s.mu.Lock()
	s.segs[seq] = seg
	s.active = seg
	s.mu.Unlock()
	return nil
}

// preallocate writes zeros over segment file f from from to the segment
// size, when the disk has room to spare.
func (s *logDB) preallocate(f *os.File, from int64) error {
	free, err := freeBytes(s.dir)
	if err != nil || free <= 4*s.segBytes+preallocMargin || s.segBytes <= from {
		return nil
	}
	zeros := make([]byte, min(s.segBytes-from, 1<<20))
	for off := from; off < s.segBytes; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), s.segBytes-off)], off); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// run commits what is waiting, then waits for more: while one commit
// syncs, the writes that arrive queue up for the next. A group's second
// write waits for the next commit, so that every write is built on what
// is on disk.
func (s *logDB) run() {
	defer close(s.done)
	var batch, carry []*logWrite
	in := map[GroupID]bool{}
	b := &logBatch{s: s}
	for {
		batch = batch[:0]
		clear(in)
		take := func(w *logWrite) {
			if in[w.g] {
				carry = append(carry, w)
				return
			}
			in[w.g] = true
			batch = append(batch, w)
		}
		held := carry
		carry = nil
		for _, w := range held {
			take(w)
		}
		if len(batch) == 0 {
			select {
			case <-s.stop:
				return
			case w := <-s.reqs:
				take(w)
			}
		}
	more:
		for len(batch)+len(carry) < maxCommitWrites {
			select {
			case w := <-s.reqs:
				take(w)
			default:
				break more
			}
		}
		s.commit(b, batch)
		s.collect()
	}
}

// commit builds, writes and syncs batch, then applies it to the index and
// answers each write. A write whose build fails fails alone; a failed
// write or sync fails the batch and cuts the file back.
func (s *logDB) commit(b *logBatch, batch []*logWrite) {
	b.buf, b.recs = b.buf[:0], b.recs[:0]
	errs := make([]error, len(batch))
	for i, w := range batch {
		nbuf, nrecs := len(b.buf), len(b.recs)
		if errs[i] = w.build(b); errs[i] != nil {
			b.buf, b.recs = b.buf[:nbuf], b.recs[:nrecs]
		}
	}
	if err := s.write(b); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	} else {
		s.commits.Add(1)
		s.writes.Add(uint64(len(batch)))
	}
	for i, w := range batch {
		w.done <- errs[i]
	}
}

// write appends b's records to the active segment (a new one if it is
// full), syncs, and applies them to the index.
func (s *logDB) write(b *logBatch) error {
	if len(b.buf) == 0 {
		return nil
	}
	if s.active.size > segHeaderSize && s.active.size+int64(len(b.buf)) > s.segBytes {
		if err := s.rotate(s.active.seq + 1); err != nil {
			return err
		}
	}
	seg, base := s.active, s.active.size
	_, err := seg.f.WriteAt(b.buf, base)
	if err == nil {
		start := time.Now()
		err = fdatasync(seg.f)
		s.syncs.observe(time.Since(start))
	}
	if err != nil {
		// What reached the file is not acknowledged: cut it off so
		// the next commit does not follow a torn record.
		if terr := seg.f.Truncate(base); terr != nil {
			err = errors.Join(err, terr)
		}
		return fmt.Errorf("replication: raft log write: %w", err)
	}
	s.mu.Lock()
	for _, r := range b.recs {
		s.apply(r.kind, r.g, r.index, recLoc{seg: seg.seq, off: base + int64(r.off), n: uint32(r.n)}, b.buf[r.off:r.off+r.n])
	}
	seg.size += int64(len(b.buf))
	s.mu.Unlock()
	return nil
}

// totalBytes is the segments' size. Called with mu held.
func (s *logDB) totalBytes() int64 {
	total := int64(0)
	for _, seg := range s.segs {
		total += seg.size
	}
	return total
}

// collect deletes the oldest segments no group needs any more. When dead
// records outweigh live ones and a group still holds the oldest segment,
// that group's live records are copied forward first.
func (s *logDB) collect() {
	for len(s.segs) > 1 { // only the committer adds or drops segments
		s.mu.RLock()
		oldest, total := s.active.seq, s.totalBytes()
		for seq := range s.segs {
			oldest = min(oldest, seq)
		}
		pinned, pinning := GroupID(0), false // the lowest group holding the oldest segment
		for g, st := range s.groups {
			if st.oldestSeg() <= oldest && (!pinning || g < pinned) {
				pinned, pinning = g, true
			}
		}
		crowded := total > 2*s.live+4*s.segBytes
		s.mu.RUnlock()
		var err error
		switch {
		case !pinning:
			err = s.dropSegment(oldest)
		case crowded:
			err = s.copyForward(pinned)
		default:
			return
		}
		if err != nil {
			return
		}
	}
}

func (s *logDB) dropSegment(seq uint64) error {
	s.mu.Lock()
	seg := s.segs[seq]
	delete(s.segs, seq)
	s.mu.Unlock()
	seg.f.Close()
	if err := os.Remove(filepath.Join(s.dir, segName(seq))); err != nil {
		return err
	}
	// Durable before the next one goes: a crash must not bring back an
	// older segment without the ones between it and the rest.
	return syncDir(s.dir)
}

// copyForward appends group g's live records again (after a reset record),
// so that older segments no longer hold any of them.
func (s *logDB) copyForward(g GroupID) error {
	b := &logBatch{s: s}
	s.mu.RLock()
	st := s.groups[g]
	var err error
	if st != nil {
		b.add(recReset, g, 0, sealRecord(nil))
		for _, k := range slices.Sorted(maps.Keys(st.stable)) {
			var body []byte
			if body, err = s.readLoc(st.stable[k].loc); err != nil {
				break
			}
			b.add(recSet, g, 0, body)
		}
		for i, l := range st.locs {
			if err != nil {
				break
			}
			var body []byte
			if body, err = s.readLoc(l); err == nil {
				b.add(recEntry, g, st.first+uint64(i), body)
			}
		}
	}
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	return s.write(b)
}

// readLoc reads a record's body. The caller holds mu (shared or not).
func (s *logDB) readLoc(l recLoc) ([]byte, error) {
	seg := s.segs[l.seg]
	if seg == nil {
		return nil, fmt.Errorf("%w: raft log segment %s is gone", ErrCorrupt, segName(l.seg))
	}
	body := make([]byte, l.n)
	if _, err := seg.f.ReadAt(body, l.off); err != nil {
		return nil, fmt.Errorf("replication: read raft log segment %s: %w", segName(l.seg), err)
	}
	return body, nil
}

var errLogStoreClosed = errors.New("replication: raft log store closed")

// update queues a write of group g and returns once it is synced.
func (s *logDB) update(g GroupID, build func(b *logBatch) error) error {
	w := &logWrite{g: g, build: build, done: make(chan error, 1)}
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

// Close stops the committer (after the commit in progress) and closes the files.
func (s *logDB) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	<-s.done
	return s.closeFiles()
}

func (s *logDB) closeFiles() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, seg := range s.segs {
		errs = append(errs, seg.f.Close())
	}
	return errors.Join(errs...)
}

// LogStats are a node's Raft log counters: commits (each one write and one
// fdatasync), the writes (appends, deletes, stable-state sets) they
// carried, the log's size on disk, and how long its syncs took.
type LogStats struct {
	Commits, Writes uint64
	Bytes           int64
	Segments        int
	Syncs           LatencyHistogram
}

func (s *logDB) stats() LogStats {
	st := LogStats{Commits: s.commits.Load(), Writes: s.writes.Load(), Syncs: s.syncs.snapshot()}
	s.mu.RLock()
	st.Bytes, st.Segments = s.totalBytes(), len(s.segs)
	s.mu.RUnlock()
	return st
}

// LatencyBounds are the upper bounds of a LatencyHistogram's buckets.
var latencyBounds = [...]time.Duration{100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond,
	50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, time.Second}

// LatencyHistogram is a snapshot of a latencies recorder: Counts[i] is
// how many took at most Bounds[i] (and more than Bounds[i-1]); Over how
// many took longer than the last bound.
type LatencyHistogram struct {
	Bounds []time.Duration
	Counts []uint64
	Over   uint64
	Sum    time.Duration
}

// latencies counts durations into latencyBounds' buckets, lock-free.
type latencies struct {
	counts [len(latencyBounds) + 1]atomic.Uint64
	sum    atomic.Int64
}

func (l *latencies) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	l.counts[i].Add(1)
	l.sum.Add(int64(d))
}

func (l *latencies) snapshot() LatencyHistogram {
	h := LatencyHistogram{Bounds: latencyBounds[:], Counts: make([]uint64, len(latencyBounds)), Sum: time.Duration(l.sum.Load())}
	for i := range h.Counts {
		h.Counts[i] = l.counts[i].Load()
	}
	h.Over = l.counts[len(latencyBounds)].Load()
	return h
}

// segments lists the segment files' sequence numbers, oldest first.
func (s *logDB) segments() []uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Sorted(maps.Keys(s.segs))
}

// dropGroup deletes everything of group g.
func (s *logDB) dropGroup(g GroupID) error {
	return s.update(g, func(b *logBatch) error {
		if s.groups[g] != nil {
			b.add(recReset, g, 0, sealRecord(nil))
		}
		return nil
	})
}

// verifyGroup describes the first problem of group g's log found at open —
// records lost or damaged where their entry cannot be told, a damaged
// entry from index from on —
// or returns "" when there is none.
func (s *logDB) verifyGroup(g GroupID, from uint64) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := s.groups[g]
	if st == nil {
		return "", nil
	}
	if st.lost != "" {
		return st.lost, nil
	}
	for i, l := range st.locs {
		if idx := st.first + uint64(i); idx >= from && l.bad {
			return fmt.Sprintf("raft log entry %d: %v: record fails its CRC32C", idx, ErrCorrupt), nil
		}
	}
	return "", nil
}

// groupLog is one group's raft.LogStore and raft.StableStore in the shared store.
type groupLog struct {
	s       *logDB
	g       GroupID
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
	return &groupLog{s: s, g: g, corrupt: corrupt}
}

// Close does nothing: the store outlives its groups (Host.Close closes it).
func (l *groupLog) Close() error { return nil }

func (l *groupLog) FirstIndex() (uint64, error) {
	l.s.mu.RLock()
	defer l.s.mu.RUnlock()
	if st := l.s.groups[l.g]; st != nil && len(st.locs) > 0 {
		return st.first, nil
	}
	return 0, nil
}

func (l *groupLog) LastIndex() (uint64, error) {
	l.s.mu.RLock()
	defer l.s.mu.RUnlock()
	if st := l.s.groups[l.g]; st != nil {
		return st.last(), nil
	}
	return 0, nil
}

func (l *groupLog) GetLog(index uint64, out *raft.Log) error {
	l.s.mu.RLock()
	st := l.s.groups[l.g]
	if st == nil || len(st.locs) == 0 || index < st.first || index > st.last() {
		l.s.mu.RUnlock()
		return raft.ErrLogNotFound
	}
	val, err := l.s.readLoc(st.locs[index-st.first])
	l.s.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("replication: %s: read raft log entry %d: %w", l.g, index, err)
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

// StoreLogs appends logs, which must have consecutive indexes. Entries at
// or before the group's last one replace it and what follows (raft
// overwrites a conflicting suffix that way); entries after a gap replace
// the whole log (a follower that installed a snapshot past its log).
func (l *groupLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	for i, log := range logs[1:] {
		if log.Index != logs[i].Index+1 {
			return fmt.Errorf("replication: %s: raft log entries %d and %d do not follow on", l.g, logs[i].Index, log.Index)
		}
	}
	recs := make([][]byte, len(logs))
	var size int64
	for i, log := range logs {
		recs[i] = encodeLog(log)
		size += int64(len(recs[i]))
	}
	err := l.s.update(l.g, func(b *logBatch) error {
		if st := b.s.groups[l.g]; st != nil && len(st.locs) > 0 {
			first, last, from := st.first, st.last(), logs[0].Index
			switch {
			case from <= last:
				b.add(recDelete, l.g, max(from, first), sealRecord(binary.BigEndian.AppendUint64(nil, last)))
			case from > last+1:
				b.add(recDelete, l.g, first, sealRecord(binary.BigEndian.AppendUint64(nil, last)))
			}
		}
		for i, log := range logs {
			b.add(recEntry, l.g, log.Index, recs[i])
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

// DeleteRange deletes entries min..max. raft deletes a prefix (compaction)
// or a suffix (a conflict); a range strictly inside the log is refused.
func (l *groupLog) DeleteRange(min, max uint64) error {
	err := l.s.update(l.g, func(b *logBatch) error {
		st := b.s.groups[l.g]
		if st == nil || len(st.locs) == 0 || min > max || max < st.first || min > st.last() {
			return nil
		}
		if min > st.first && max < st.last() {
			return fmt.Errorf("entries %d..%d lie inside the log (%d..%d)", min, max, st.first, st.last())
		}
		b.add(recDelete, l.g, min, sealRecord(binary.BigEndian.AppendUint64(nil, max)))
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
	if len(key) > 1<<16-1 {
		return fmt.Errorf("replication: %s: raft state key of %d bytes", l.g, len(key))
	}
	body := binary.BigEndian.AppendUint16(nil, uint16(len(key)))
	body = append(append(body, key...), val...)
	err := l.s.update(l.g, func(b *logBatch) error {
		b.add(recSet, l.g, 0, sealRecord(body))
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: %s: store raft state %q: %w", l.g, key, err)
	}
	return nil
}

func (l *groupLog) Get(key []byte) ([]byte, error) {
	l.s.mu.RLock()
	var v stableVal
	var ok bool
	if st := l.s.groups[l.g]; st != nil {
		v, ok = st.stable[string(key)]
	}
	l.s.mu.RUnlock()
	if !ok {
		return nil, errStableNotFound
	}
	return slices.Clone(v.val), nil
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

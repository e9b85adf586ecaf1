package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

func openTestLogDB(t *testing.T, path string) *logDB {
	t.Helper()
	s, err := openLogDB(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testLog(idx, term uint64, size int) *raft.Log {
	data := make([]byte, size)
	if size >= 8 {
		binary.BigEndian.PutUint64(data, idx)
	}
	return &raft.Log{Index: idx, Term: term, Type: raft.LogCommand, Data: data, AppendedAt: time.Unix(0, int64(idx)*1000)}
}

func sameLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type && bytes.Equal(a.Data, b.Data) &&
		bytes.Equal(a.Extensions, b.Extensions) && a.AppendedAt.Equal(b.AppendedAt)
}

// The shared store behaves as raft's own in-memory store does, for every
// group at once, under a random mix of appends, prefix and suffix deletes
// and stable-state writes; it survives a reopen; and dropping one group
// leaves the others whole.
func TestLogStoreMatchesRaftInmemStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft-log")
	s := openTestLogDB(t, path)
	const groups = 5
	ref := make([]*raft.InmemStore, groups)
	for i := range ref {
		ref[i] = raft.NewInmemStore()
	}
	r := rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 600; step++ {
		g := r.IntN(groups)
		gl, want := s.group(GroupID(g), nil), ref[g]
		last, _ := want.LastIndex()
		switch op := r.IntN(10); {
		case op < 6:
			var logs []*raft.Log
			for i := range 1 + r.IntN(8) {
				logs = append(logs, testLog(last+1+uint64(i), 1+last/50, r.IntN(300)))
			}
			if err := gl.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			_ = want.StoreLogs(logs)
		case op < 8 && last > 10:
			first, _ := want.FirstIndex()
			if last < first+2 {
				continue
			}
			upto := first + uint64(r.IntN(int(last-first)))
			if err := gl.DeleteRange(first, upto); err != nil {
				t.Fatal(err)
			}
			_ = want.DeleteRange(first, upto)
		case op < 9 && last > 3:
			from := last - uint64(r.IntN(3)) // conflicting suffix, as a follower truncates
			if err := gl.DeleteRange(from, last); err != nil {
				t.Fatal(err)
			}
			_ = want.DeleteRange(from, last)
		default:
			v := uint64(r.IntN(1000))
			if err := gl.SetUint64([]byte("CurrentTerm"), v); err != nil {
				t.Fatal(err)
			}
			_ = want.SetUint64([]byte("CurrentTerm"), v)
		}
	}
	check := func(s *logDB, skip int) {
		t.Helper()
		for g := range groups {
			if g == skip {
				continue
			}
			gl, want := s.group(GroupID(g), nil), ref[g]
			f1, _ := gl.FirstIndex()
			f2, _ := want.FirstIndex()
			l1, _ := gl.LastIndex()
			l2, _ := want.LastIndex()
			if f1 != f2 || l1 != l2 {
				t.Fatalf("group %d: first/last %d/%d, raft's store %d/%d", g, f1, l1, f2, l2)
			}
			for i := max(f2, 1) - 1; i <= l2+1; i++ {
				var a, b raft.Log
				e1, e2 := gl.GetLog(i, &a), want.GetLog(i, &b)
				if (e1 == nil) != (e2 == nil) || (e1 == nil && !sameLog(&a, &b)) {
					t.Fatalf("group %d entry %d: %v %+v, raft's store %v %+v", g, i, e1, a, e2, b)
				}
				if e1 != nil && !errors.Is(e1, raft.ErrLogNotFound) {
					t.Fatalf("group %d entry %d: %v", g, i, e1)
				}
			}
			v1, e1 := gl.GetUint64([]byte("CurrentTerm"))
			v2, e2 := want.GetUint64([]byte("CurrentTerm"))
			if v1 != v2 || (e1 == nil) != (e2 == nil) {
				t.Fatalf("group %d term %d %v, raft's store %d %v", g, v1, e1, v2, e2)
			}
			if _, err := gl.Get([]byte("LastVoteCand")); err == nil || err.Error() != "not found" {
				t.Fatalf("missing stable key: %v, raft needs the text \"not found\"", err)
			}
		}
	}
	check(s, -1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestLogDB(t, path)
	check(s, -1)
	if err := s.dropGroup(2); err != nil {
		t.Fatal(err)
	}
	gone := func(s *logDB) {
		t.Helper()
		gl := s.group(2, nil)
		if last, _ := gl.LastIndex(); last != 0 {
			t.Fatalf("group 2 holds entries up to %d after drop", last)
		}
		if _, err := gl.Get([]byte("CurrentTerm")); err == nil {
			t.Fatal("group 2 keeps its raft state after drop")
		}
	}
	gone(s)
	check(s, 2)
	s.Close()
	s = openTestLogDB(t, path)
	defer s.Close()
	gone(s)
	check(s, 2)
}

// Appends of many groups at once share commits (one sync each), and each
// returns only once its commit is done.
func TestLogStoreGroupCommit(t *testing.T) {
	s := openTestLogDB(t, filepath.Join(t.TempDir(), "raft-log"))
	defer s.Close()
	const groups, per = 32, 40
	var wg sync.WaitGroup
	for g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gl := s.group(GroupID(g), nil)
			for i := 1; i <= per; i++ {
				if err := gl.StoreLogs([]*raft.Log{testLog(uint64(i), 1, 256)}); err != nil {
					t.Error(err)
					return
				}
				if last, _ := gl.LastIndex(); last != uint64(i) {
					t.Errorf("group %d: acknowledged %d, store says last %d", g, i, last)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.stats()
	if st.Writes != groups*per || st.Commits >= st.Writes {
		t.Fatalf("%d writes in %d commits: appends of different groups never shared a commit", st.Writes, st.Commits)
	}
	t.Logf("%d appends from %d groups in %d commits", st.Writes, groups, st.Commits)
}

// A damaged record is reported to its group alone; the others read on.
func TestLogStoreDamagedRecordBlamesItsGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft-log")
	s := openTestLogDB(t, path)
	marker := []byte("MARKER-OF-GROUP-SEVEN")
	for g := GroupID(5); g <= 8; g++ {
		l := testLog(1, 1, 64)
		if g == 7 {
			l.Data = append(l.Data, marker...)
		}
		if err := s.group(g, nil).StoreLog(l); err != nil {
			t.Fatal(err)
		}
	}
	// One more record after it, so that the damaged one is not the
	// torn tail of the last segment.
	if err := s.group(9, nil).StoreLog(testLog(1, 1, 64)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	seg := filepath.Join(path, segName(1))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, marker)
	if i < 0 {
		t.Fatal("record not found in the file")
	}
	b[i] ^= 0xFF
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTestLogDB(t, path)
	defer s.Close()
	blamed := map[GroupID]string{}
	for g := GroupID(5); g <= 8; g++ {
		var l raft.Log
		err := s.group(g, func(r string) { blamed[g] = r }).GetLog(1, &l)
		if (g == 7) != (err != nil) {
			t.Fatalf("group %d: %v", g, err)
		}
		if g == 7 && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("group 7: %v, want ErrCorrupt", err)
		}
	}
	if len(blamed) != 1 || blamed[7] == "" {
		t.Fatalf("blamed %v, want group 7 alone", blamed)
	}
	// At open, entries from the given index on are checked.
	for g := GroupID(5); g <= 8; g++ {
		bad, err := s.verifyGroup(g, 1)
		if err != nil || (g == 7) != (bad != "") {
			t.Fatalf("verify group %d from 1: %q, %v", g, bad, err)
		}
	}
	if bad, err := s.verifyGroup(7, 2); bad != "" || err != nil {
		t.Fatalf("verify group 7 from 2 (past the damaged entry): %q, %v", bad, err)
	}
}

// A group's log in the per-group raft-boltdb file of earlier versions is
// moved into the shared store when the group opens, and the file removed.
func TestLogStoreMigratesPerGroupFile(t *testing.T) {
	dir := t.TempDir()
	eng, err := OpenEngine(EngineConfig{Dir: filepath.Join(dir, "engine"), Profile: "small"})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	gdir := filepath.Join(dir, "raft", "p4")
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(gdir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	var want []*raft.Log
	for i := uint64(1); i <= 40; i++ {
		want = append(want, testLog(i, 3, 100))
	}
	if err := old.StoreLogs(want); err != nil {
		t.Fatal(err)
	}
	if err := old.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	old.Close()
	h, err := NewHost(HostConfig{NodeID: "n1", Dir: filepath.Join(dir, "raft"), Engine: eng, Transports: NewInmemNetwork().Node("n1")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	if err := h.migrateLog(context.Background(), 4, KindData, gdir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(gdir, "raft.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old file still there: %v", err)
	}
	gl := h.logs.group(4, nil)
	for _, w := range want {
		var l raft.Log
		if err := gl.GetLog(w.Index, &l); err != nil || l.Index != w.Index || !bytes.Equal(l.Data, w.Data) {
			t.Fatalf("entry %d after migration: %v", w.Index, err)
		}
	}
	if term, err := gl.GetUint64([]byte("CurrentTerm")); term != 3 || err != nil {
		t.Fatalf("term after migration: %d, %v", term, err)
	}
}

func TestLogRecordRoundTrip(t *testing.T) {
	for _, l := range []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogNoop},
		{Index: 1 << 40, Term: 7, Type: raft.LogCommand, Data: []byte("x"), Extensions: []byte("ext"), AppendedAt: time.Unix(5, 6)},
		testLog(9, 2, 4096),
	} {
		var got raft.Log
		if err := decodeLog(encodeLog(l), &got); err != nil || !sameLog(&got, l) {
			t.Fatalf("%+v decoded as %+v, %v", l, got, err)
		}
		rec := encodeLog(l)
		for _, cut := range []int{0, 3, 10, len(rec) - 1} {
			if err := decodeLog(rec[:cut], &got); err == nil {
				t.Fatalf("a record cut to %d bytes decoded", cut)
			}
		}
	}
	if !reflect.DeepEqual(fmt.Sprint(errStableNotFound), "not found") {
		t.Fatal("raft tells a missing key by the text \"not found\"")
	}
}

// A write cut short by a crash (the last segment's tail) is cut off at
// open, wherever it was cut; everything before it is intact, and the store
// takes appends after it that survive the next open.
func TestLogStoreCutsTornTail(t *testing.T) {
	base := t.TempDir()
	path := filepath.Join(base, "raft-log")
	s := openTestLogDB(t, path)
	for g := GroupID(1); g <= 3; g++ {
		for i := uint64(1); i <= 5; i++ {
			if err := s.group(g, nil).StoreLog(testLog(i, 1, 100)); err != nil {
				t.Fatal(err)
			}
		}
	}
	end := func() int64 {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.active.size
	}
	before := end()
	torn := testLog(6, 1, 300)
	torn.Extensions = []byte("no zeros at the end")
	if err := s.group(2, nil).StoreLog(torn); err != nil {
		t.Fatal(err)
	}
	after := end()
	s.Close()
	whole, err := os.ReadFile(filepath.Join(path, segName(1)))
	if err != nil {
		t.Fatal(err)
	}
	for i, cut := range []int64{before + 1, before + recHeaderSize - 1, before + recHeaderSize + 10, after - 1,
		before + 1, before + recHeaderSize + 10, after - 1} {
		// The file ends where the write was cut, or (the last three)
		// the rest of the preallocated segment reads as zeros.
		data := whole[:cut]
		if i >= 4 {
			data = append(slices.Clone(whole[:cut]), make([]byte, len(whole)-int(cut))...)
		}
		dir := filepath.Join(base, fmt.Sprint("cut", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, segName(1)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s := openTestLogDB(t, dir)
		for g := GroupID(1); g <= 3; g++ {
			if last, _ := s.group(g, nil).LastIndex(); last != 5 {
				t.Fatalf("cut at %d: group %d ends at %d, want 5 (entry 6 of group 2 was torn)", cut, g, last)
			}
			if bad, _ := s.verifyGroup(g, 1); bad != "" {
				t.Fatalf("cut at %d: group %d blamed: %s", cut, g, bad)
			}
		}
		if err := s.group(2, nil).StoreLog(testLog(6, 2, 50)); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = openTestLogDB(t, dir)
		var l raft.Log
		if err := s.group(2, nil).GetLog(6, &l); err != nil || l.Term != 2 {
			t.Fatalf("cut at %d: entry 6 appended after the cut: %v %+v", cut, err, l)
		}
		s.Close()
	}
}

// Segments whose records are all dead are deleted; a quiet group that
// holds the oldest segment is copied forward once dead records outweigh
// live ones, and reads the same before and after a reopen.
func TestLogStoreCollectsSegments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft-log")
	const segBytes = 64 << 10
	s, err := openLogDBSized(path, segBytes)
	if err != nil {
		t.Fatal(err)
	}
	quiet, busy := s.group(1, nil), s.group(2, nil)
	for i := uint64(1); i <= 3; i++ {
		if err := quiet.StoreLog(testLog(i, 1, 500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := quiet.SetUint64([]byte("CurrentTerm"), 9); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 2000; i++ {
		if err := busy.StoreLog(testLog(i, 1, 1000)); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if err := busy.DeleteRange(1, i-10); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 2 MB written; what is live is about 10 KB of the busy group and
	// the quiet group's 1.5 KB.
	segs := s.segments()
	if len(segs) > 8 {
		t.Fatalf("%d segments of %d KiB left for ~12 KB of live records", len(segs), segBytes>>10)
	}
	check := func(s *logDB) {
		t.Helper()
		q := s.group(1, nil)
		for i := uint64(1); i <= 3; i++ {
			var l raft.Log
			if err := q.GetLog(i, &l); err != nil || !sameLog(&l, testLog(i, 1, 500)) {
				t.Fatalf("quiet group entry %d: %v", i, err)
			}
		}
		if v, err := q.GetUint64([]byte("CurrentTerm")); v != 9 || err != nil {
			t.Fatalf("quiet group term %d, %v", v, err)
		}
		b := s.group(2, nil)
		if f, _ := b.FirstIndex(); f != 1991 {
			t.Fatalf("busy group starts at %d, want 1991", f)
		}
		if l, _ := b.LastIndex(); l != 2000 {
			t.Fatalf("busy group ends at %d, want 2000", l)
		}
		if bad, _ := s.verifyGroup(1, 1); bad != "" {
			t.Fatal(bad)
		}
	}
	check(s)
	s.Close()
	s = openTestLogDB(t, path)
	defer s.Close()
	check(s)
	if segs[0] == 1 {
		t.Fatal("the first segment, where the quiet group was written, is still there")
	}
}

// Every group of the shared bbolt file of the previous version is moved
// into the segment log, and the file removed.
func TestLogStoreMigratesSharedBoltFile(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, oldLogDBFile)
	db, err := bbolt.Open(old, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, g := range []GroupID{3, MetaGroup} {
			lb, err := tx.CreateBucket(binary.BigEndian.AppendUint32([]byte{'l'}, uint32(g)))
			if err != nil {
				return err
			}
			for i := uint64(4); i <= 9; i++ {
				if err := lb.Put(binary.BigEndian.AppendUint64(nil, i), encodeLog(testLog(i, 2, 80))); err != nil {
					return err
				}
			}
			sb, err := tx.CreateBucket(binary.BigEndian.AppendUint32([]byte{'s'}, uint32(g)))
			if err != nil {
				return err
			}
			if err := sb.Put([]byte("CurrentTerm"), sealRecord(binary.BigEndian.AppendUint64(nil, 2))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openTestLogDB(t, filepath.Join(dir, logDir))
	defer s.Close()
	if err := migrateBoltLog(context.Background(), s, old); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old file still there: %v", err)
	}
	for _, g := range []GroupID{3, MetaGroup} {
		gl := s.group(g, nil)
		if f, _ := gl.FirstIndex(); f != 4 {
			t.Fatalf("%s starts at %d after migration", g, f)
		}
		for i := uint64(4); i <= 9; i++ {
			var l raft.Log
			if err := gl.GetLog(i, &l); err != nil || !sameLog(&l, testLog(i, 2, 80)) {
				t.Fatalf("%s entry %d after migration: %v", g, i, err)
			}
		}
		if term, err := gl.GetUint64([]byte("CurrentTerm")); term != 2 || err != nil {
			t.Fatalf("%s term after migration: %d, %v", g, term, err)
		}
	}
}

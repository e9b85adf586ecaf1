package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// smHarness drives one data partition's state machine directly, without
// Raft: commands go in as log entries, in batches the test chooses.
type smHarness struct {
	t     *testing.T
	eng   Engine
	sm    *stateMachine
	g     *Group
	index uint64
	now   time.Time // the clock reads use
}

const testGroup = GroupID(3)

func newSMHarness(t *testing.T, r WatchRetention) *smHarness {
	t.Helper()
	eng, err := OpenEngine(EngineConfig{Dir: filepath.Join(t.TempDir(), "engine"), Profile: "small"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	app, err := newKVApplier(testGroup, eng, r, newChecks(), &corruption{})
	if err != nil {
		t.Fatal(err)
	}
	sm, err := newStateMachine(testGroup, eng, app, nil, func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	h := &smHarness{t: t, eng: eng, sm: sm, index: 2, now: time.Unix(1_800_000_000, 0)}
	h.g = &Group{id: testGroup, sm: sm, corrupt: &corruption{}, clock: func() time.Time { return h.now }}
	return h
}

// applyBatch applies commands as consecutive log entries in one batch.
func (h *smHarness) applyBatch(cmds ...*gridpb.Command) []*gridpb.Result {
	h.t.Helper()
	var logs []*raft.Log
	for _, c := range cmds {
		data, err := proto.Marshal(c)
		if err != nil {
			h.t.Fatal(err)
		}
		h.index++
		logs = append(logs, &raft.Log{Index: h.index, Type: raft.LogCommand, Data: data})
	}
	var out []*gridpb.Result
	for _, r := range h.sm.ApplyBatch(logs) {
		ar := r.(applyResult)
		if ar.err != nil {
			h.t.Fatalf("apply: %v", ar.err)
		}
		out = append(out, ar.res)
	}
	return out
}

func (h *smHarness) apply(c *gridpb.Command) *gridpb.Result { return h.applyBatch(c)[0] }

func (h *smHarness) at() int64 { return h.now.UnixNano() }

func putCmd(now int64, key, value string, ttl time.Duration) *gridpb.Command {
	return &gridpb.Command{LeaderTime: now, Op: &gridpb.Command_Put{Put: &gridpb.PutOp{
		Map: "m", Key: []byte(key), Value: []byte(value), TtlNanos: int64(ttl),
	}}}
}

func (h *smHarness) get(key string) (StoredEntry, error) {
	e, _, err := h.g.Get(context.Background(), "m", []byte(key), false)
	return e, err
}

func TestTTLExpiryHidesKeyFromReadsAndCompares(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	res := h.apply(putCmd(h.at(), "k", "v", 10*time.Second))
	e, err := h.get("k")
	if err != nil || e.Expiry != h.at()+int64(10*time.Second) || e.Version != res.Version {
		t.Fatalf("fresh TTL key: %+v %v", e, err)
	}
	h.apply(putCmd(h.at(), "forever", "v", 0))

	h.now = h.now.Add(10 * time.Second) // expiry is inclusive
	if _, err := h.get("k"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("expired key read: %v", err)
	}
	entries, _, _, err := h.g.Scan(context.Background(), "m", nil, nil, 100, 1<<20, false)
	if err != nil || len(entries) != 1 || string(entries[0].Key) != "forever" {
		t.Fatalf("scan after expiry: %v %v", entries, err)
	}
	var seen []string
	if _, err := h.g.Each(context.Background(), "m", nil, false, func(k, _ []byte) error {
		seen = append(seen, string(k))
		return nil
	}); err != nil || len(seen) != 1 {
		t.Fatalf("each after expiry: %v %v", seen, err)
	}

	// The state machine decides by the command's leader time: a compare
	// made before the expiry sees the key, one after does not.
	before := h.at() - int64(time.Second)
	txn := func(now int64) *gridpb.Result {
		return h.apply(&gridpb.Command{LeaderTime: now, Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{
			Map: "m", Compares: []*gridpb.TxnCompare{{Key: []byte("k"), Target: gridpb.TxnCompare_MISSING}},
		}}})
	}
	if txn(before).Ok || !txn(h.at()).Ok {
		t.Fatal("txn MISSING compare does not follow the expiry")
	}
	del := h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("k")}}})
	if del.Existed {
		t.Fatal("delete of an expired key reports it existed")
	}
	// CAS expecting "absent" succeeds on an expired key.
	cas := h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{
		Map: "m", Key: []byte("k"), ExpectedVersion: 0, Value: []byte("new"), TtlNanos: int64(time.Minute),
	}}})
	if !cas.Ok || cas.Existed {
		t.Fatalf("cas over expired key: %+v", cas)
	}
	if e, err := h.get("k"); err != nil || string(e.Value) != "new" {
		t.Fatalf("after cas: %+v %v", e, err)
	}
}

func TestBadTTLWritesNothing(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	for _, ttl := range []time.Duration{-time.Second, time.Microsecond, grid.MaxTTL + 1} {
		res := h.apply(putCmd(h.at(), "k", "v", ttl))
		if res.Error != resBadTTL {
			t.Fatalf("ttl %v: result %+v", ttl, res)
		}
		res = h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", ThenOps: []*gridpb.TxnWrite{
			{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("b"), Value: []byte("2"), TtlNanos: int64(ttl)},
		}}}})
		if res.Error != resBadTTL {
			t.Fatalf("txn ttl %v: result %+v", ttl, res)
		}
	}
	for _, k := range []string{"k", "a", "b"} {
		if _, err := h.get(k); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("%s written despite a bad TTL: %v", k, err)
		}
	}
	changes, _, _, err := h.g.ReadChanges(1, 1<<20)
	if err != nil || len(changes) != 0 {
		t.Fatalf("change log after refused writes: %v %v", changes, err)
	}
	n := 0
	v, _ := h.eng.NewView()
	defer v.Close()
	_ = v.Iterate(expiryPrefix(testGroup), nil, func(_, _ []byte) (bool, error) { n++; return true, nil })
	if n != 0 {
		t.Fatalf("%d expiry index entries after refused writes", n)
	}
}

func TestExpireOpDeletesOnlyUnchangedExpiredKeys(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	t0 := h.at()
	h.apply(putCmd(t0, "gone", "1", time.Second))
	h.apply(putCmd(t0, "rewritten", "1", time.Second))
	h.apply(putCmd(t0, "rewritten", "2", 0)) // no TTL any more
	h.apply(putCmd(t0, "later", "1", time.Hour))

	h.now = h.now.Add(2 * time.Second)
	keys, next, err := h.g.expiredKeys(h.at(), 100)
	if err != nil || len(keys) != 2 {
		t.Fatalf("expired index entries: %v %v", keys, err)
	}
	if want := t0 + int64(time.Hour); next != want {
		t.Fatalf("next expiry %d, want %d (the key that lives an hour)", next, want)
	}
	// A sweep proposed with a leader time before the expiry deletes nothing.
	h.apply(&gridpb.Command{LeaderTime: t0, Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: keys}}})
	if raw, err := h.eng.Get(dataKey(testGroup, "m", []byte("gone"))); err != nil || raw == nil {
		t.Fatalf("expire before the expiry deleted the key: %v", err)
	}
	res := h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: keys}}})
	if _, err := h.eng.Get(dataKey(testGroup, "m", []byte("gone"))); !errors.Is(err, ErrEngineNotFound) {
		t.Fatalf("expired key still stored: %v", err)
	}
	if e, err := h.get("rewritten"); err != nil || string(e.Value) != "2" {
		t.Fatalf("rewritten key: %+v %v", e, err)
	}
	if keys, _, _ := h.g.expiredKeys(h.at(), 100); len(keys) != 0 {
		t.Fatalf("index entries left after the sweep: %v", keys)
	}
	if keys, _, _ := h.g.expiredKeys(h.at()+int64(2*time.Hour), 100); len(keys) != 1 || string(keys[0].Key) != "later" {
		t.Fatalf("future index entries: %v", keys)
	}
	changes, _, _, err := h.g.ReadChanges(res.Version, 1<<20)
	if err != nil || len(changes) != 1 || len(changes[0].Events) != 1 ||
		changes[0].Events[0].Type != gridpb.WatchEvent_EXPIRE || string(changes[0].Events[0].Key) != "gone" {
		t.Fatalf("expire change: %v %v", changes, err)
	}
}

func TestChangeLogRecordsEveryChangeInOrder(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	h.apply(putCmd(h.at(), "a", "1", 0))
	h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("nothing")}}})
	h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", ThenOps: []*gridpb.TxnWrite{
		{Key: []byte("b"), Value: []byte("2"), TtlNanos: int64(time.Minute)}, {Key: []byte("a"), Delete: true},
	}}}})
	changes, progress, oldest, err := h.g.ReadChanges(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if progress != h.index || oldest != 1 || len(changes) != 2 {
		t.Fatalf("progress %d (applied %d), oldest %d, %d changes", progress, h.index, oldest, len(changes))
	}
	got := ""
	for _, c := range changes {
		for _, e := range c.Events {
			got += fmt.Sprintf("%d:%s:%s=%s ", c.Version, e.Type, e.Key, e.Value)
		}
	}
	want := "3:PUT:a=1 5:PUT:b=2 5:DELETE:a= "
	if got != want {
		t.Fatalf("changes %q, want %q", got, want)
	}
	if _, p, _, _ := h.g.ReadChanges(0, 1<<20); p != h.index {
		t.Fatalf("from-now progress %d, want %d", p, h.index)
	}
}

// Pruning is part of the replicated state: however the log is cut into
// batches, replicas end with byte-identical partitions.
func TestChangeLogPruningIsDeterministicAndReportsCompaction(t *testing.T) {
	ret := WatchRetention{Entries: 100, Bytes: 6000}
	a, b := newSMHarness(t, ret), newSMHarness(t, ret)
	var cmds []*gridpb.Command
	for i := range 700 {
		v := "v"
		if i%50 == 0 {
			v = string(bytes.Repeat([]byte("x"), 900)) // pushes the byte bound
		}
		cmds = append(cmds, putCmd(a.at(), fmt.Sprintf("k%03d", i%37), v, 0))
	}
	for _, c := range cmds {
		a.apply(c)
	}
	for i := 0; i < len(cmds); i += 37 {
		b.applyBatch(cmds[i:min(i+37, len(cmds))]...)
	}
	if da, db := dumpGroup(t, a.eng), dumpGroup(t, b.eng); da != db {
		t.Fatal("replicas differ after the same log cut into different batches")
	}
	_, progress, oldest, err := a.g.ReadChanges(0, 1<<20)
	if err != nil || progress != a.index {
		t.Fatal(err)
	}
	if oldest < a.index-ret.Entries-pruneStep || oldest > a.index-ret.Entries+1 {
		t.Fatalf("oldest retained %d at index %d with retention %d", oldest, a.index, ret.Entries)
	}
	_, _, _, err = a.g.ReadChanges(oldest-1, 1<<20)
	var ce *grid.CompactedError
	if !errors.As(err, &ce) || ce.Oldest != oldest || ce.Requested != oldest-1 || ce.Partition != int(testGroup) {
		t.Fatalf("read before the history: %v", err)
	}
	changes, _, _, err := a.g.ReadChanges(oldest, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for i, c := range changes {
		if c.Version != oldest+uint64(i) {
			t.Fatalf("change %d has version %d, want %d (a gap)", i, c.Version, oldest+uint64(i))
		}
		raw, _ := proto.Marshal(&gridpb.WatchLogRecord{Events: c.Events})
		size += len(raw)
	}
	if changes[len(changes)-1].Version != a.index || uint64(size) > ret.Bytes {
		t.Fatalf("history ends at %d (applied %d), %d bytes (bound %d)", changes[len(changes)-1].Version, a.index, size, ret.Bytes)
	}
	// A bounded read stops early and says how far it got.
	part, p, _, err := a.g.ReadChanges(oldest, 1)
	if err != nil || len(part) != 1 || p != part[0].Version {
		t.Fatalf("bounded read: %d changes, progress %d, %v", len(part), p, err)
	}
}

func dumpGroup(t *testing.T, eng Engine) string {
	t.Helper()
	v, err := eng.NewView()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var buf bytes.Buffer
	_ = v.Iterate(groupPrefix(testGroup), nil, func(k, val []byte) (bool, error) {
		fmt.Fprintf(&buf, "%x=%x\n", k, val)
		return true, nil
	})
	return buf.String()
}

func TestChangedWakesWatchers(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	ch := h.g.Changed()
	select {
	case <-ch:
		t.Fatal("woken before any apply")
	default:
	}
	h.apply(putCmd(h.at(), "a", "1", 0))
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("apply did not wake the watcher")
	}
}

// A value at the grid's limit and its copy in the change log do not fit one
// engine batch of the small profile; the record goes first, and the
// partition stays readable and watchable.
func TestLargeValuesAndTheirChangeRecords(t *testing.T) {
	h := newSMHarness(t, WatchRetention{Entries: 3, Bytes: 64 << 20})
	big := bytes.Repeat([]byte("v"), 1<<20)
	key := string(bytes.Repeat([]byte("k"), 4<<10-2))
	h.apply(putCmd(h.at(), key+"a", string(big), 0))
	h.applyBatch(putCmd(h.at(), key+"b", string(big), 0), putCmd(h.at(), key+"c", string(big), time.Hour))
	for i := range 6 { // pruning of big records
		h.apply(putCmd(h.at(), fmt.Sprintf("%s%d", key, i), string(big), 0))
	}
	if e, err := h.get(key + "c"); err != nil || len(e.Value) != len(big) {
		t.Fatalf("big value: %d bytes, %v", len(e.Value), err)
	}
	_, _, oldest, err := h.g.ReadChanges(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	changes, _, _, err := h.g.ReadChanges(oldest, 64<<20)
	if err != nil || len(changes) == 0 || changes[len(changes)-1].Version != h.index {
		t.Fatalf("change log of big values: %d changes, %v", len(changes), err)
	}
}

// A crash between a batch's early records and the batch itself leaves
// records beyond the applied index: readers ignore them, and replaying the
// entries ends in the same state as a replica that never crashed.
func TestEarlyRecordsOfAnInterruptedBatch(t *testing.T) {
	ret := WatchRetention{Entries: 10, Bytes: 1 << 20}
	a, b := newSMHarness(t, ret), newSMHarness(t, ret)
	var cmds []*gridpb.Command
	for i := range 40 {
		cmds = append(cmds, putCmd(a.at(), fmt.Sprintf("k%d", i%5), fmt.Sprintf("v%d", i), 0))
	}
	for _, c := range cmds[:20] {
		a.apply(c)
		b.apply(c)
	}
	// b "crashed" after writing the early records of entries 23..26.
	for i := 20; i < 24; i++ {
		raw, _ := proto.Marshal(&gridpb.WatchLogRecord{Events: []*gridpb.WatchEvent{{
			Type: gridpb.WatchEvent_PUT, Map: "m", Key: cmds[i].GetPut().Key, Value: cmds[i].GetPut().Value, Crc: Checksum(cmds[i].GetPut().Value),
		}}})
		var batch Batch
		batch.Set(watchRecordKey(testGroup, b.index+1+uint64(i-20)), raw)
		if err := b.eng.Write(context.Background(), &batch); err != nil {
			t.Fatal(err)
		}
	}
	changes, progress, _, err := b.g.ReadChanges(b.index, 1<<20)
	if err != nil || progress != b.index || len(changes) != 1 {
		t.Fatalf("read past the applied index: %d changes, progress %d (applied %d), %v", len(changes), progress, b.index, err)
	}
	for _, c := range cmds[20:] {
		a.apply(c)
	}
	b.applyBatch(cmds[20:]...)
	if dumpGroup(t, a.eng) != dumpGroup(t, b.eng) {
		t.Fatal("replica that replayed an interrupted batch differs")
	}
}

// TestCASKeepExpiry: an entry processor's write (CAS with keep_expiry) keeps
// the key's expiry, later swept like any TTL key; a plain CAS clears it.
func TestCASKeepExpiry(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	h.apply(putCmd(h.at(), "k", "v", 10*time.Second))
	e, _ := h.get("k")
	exp := e.Expiry
	h.now = h.now.Add(4 * time.Second)
	cas := func(ver uint64, value string, keep bool) *gridpb.Result {
		return h.apply(&gridpb.Command{LeaderTime: h.at(), Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{
			Map: "m", Key: []byte("k"), ExpectedVersion: ver, Value: []byte(value), KeepExpiry: keep,
		}}})
	}
	if r := cas(e.Version, "v2", true); !r.Ok {
		t.Fatalf("cas keeping the expiry: %v", r)
	}
	e2, err := h.get("k")
	if err != nil || string(e2.Value) != "v2" || e2.Expiry != exp {
		t.Fatalf("after a cas keeping the expiry: %+v %v, want expiry %d", e2, err, exp)
	}
	if r := cas(e2.Version, "v3", false); !r.Ok {
		t.Fatalf("plain cas: %v", r)
	}
	if e3, err := h.get("k"); err != nil || e3.Expiry != 0 {
		t.Fatalf("a plain cas keeps the expiry: %+v %v", e3, err)
	}
}

// TestDedupPruneByTime: a prune (every dedupPruneEvery indexes) deletes the
// dedup records older than the retention, in leader-time order through the
// time index, and keeps the recent ones: a retry of a recent request is
// still answered from its record.
func TestDedupPruneByTime(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	old := h.at()
	for i := uint64(1); i <= 5; i++ {
		c := putCmd(old, "old", "v", 0)
		c.ClientId, c.Seq = 7, i
		h.apply(c)
	}
	h.now = h.now.Add(dedupRetention + time.Minute)
	recent := putCmd(h.at(), "recent", "v", 0)
	recent.ClientId, recent.Seq = 7, 100
	first := h.apply(recent)
	h.index = dedupPruneEvery*(h.index/dedupPruneEvery+1) - 1 // the next entry prunes
	h.apply(putCmd(h.at(), "other", "v", 0))

	count := func(prefix []byte) int { return countPrefixEngine(t, h.eng, string(prefix)) }
	if r, tr := count(dedupPrefix(testGroup)), count(dedupTimePrefix(testGroup)); r != 1 || tr != 1 {
		t.Fatalf("after the prune: %d dedup records and %d time-index entries, want 1 and 1", r, tr)
	}
	again := proto.Clone(recent).(*gridpb.Command)
	if r := h.apply(again); r.Version != first.Version {
		t.Fatalf("retry of a recent request applied again: version %d, first %d", r.Version, first.Version)
	}
}

// TestChangeLogPruneWithinOneBatch: records pruned in the same engine batch
// that wrote them stay pruned, so the log holds its retention and no more,
// however entries are batched.
func TestChangeLogPruneWithinOneBatch(t *testing.T) {
	h := newSMHarness(t, WatchRetention{Entries: 2, Bytes: 1 << 20})
	for b := 0; b < 20; b++ {
		var cmds []*gridpb.Command
		for i := 0; i < 20; i++ {
			cmds = append(cmds, putCmd(h.at(), fmt.Sprintf("k%d", i), strings.Repeat("v", 1000), 0))
		}
		h.applyBatch(cmds...)
	}
	v, err := h.eng.NewView()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	state := watchStateKey(testGroup)
	records := 0
	if err := v.Iterate(state, nil, func(k, _ []byte) (bool, error) {
		if len(k) == len(state)+8 {
			records++
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Count pruning runs every pruneStep indexes: up to that many more.
	if records > 2+pruneStep {
		t.Fatalf("%d change-log records after 400 puts with a retention of 2 entries (pruned every %d)", records, pruneStep)
	}
}

// The sweep skips a partition whose expiry index has nothing due until the
// earliest expiry it saw, reads the index again as soon as a new expiry is
// applied, and learns nothing from a scan that raced with one.
func TestExpiryHintSkipsOnlyWhileNothingIsDue(t *testing.T) {
	h := newSMHarness(t, WatchRetention{})
	kv := h.sm.app.(*kvApplier)
	if due, err := h.g.dueForSweep(h.at(), 100); err != nil || len(due) != 0 {
		t.Fatalf("empty index: %v %v", due, err)
	}
	if skip, _ := kv.hint.skip(h.at()); !skip {
		t.Fatal("an empty index was read again")
	}
	h.apply(putCmd(h.at(), "later", "1", time.Hour))
	if skip, _ := kv.hint.skip(h.at()); skip {
		t.Fatal("a new expiry left the hint in place")
	}
	if due, err := h.g.dueForSweep(h.at(), 100); err != nil || len(due) != 0 {
		t.Fatalf("nothing due yet: %v %v", due, err)
	}
	h.apply(putCmd(h.at(), "soon", "1", time.Second))
	h.now = h.now.Add(2 * time.Second)
	due, err := h.g.dueForSweep(h.at(), 100)
	if err != nil || len(due) != 1 || string(due[0].Key) != "soon" {
		t.Fatalf("due after a second: %v %v", due, err)
	}
	// Nothing learned while keys were due: the next sweep reads again.
	if skip, _ := kv.hint.skip(h.at()); skip {
		t.Fatal("the hint skips while a key is due")
	}
	// A scan that started before a new expiry was applied learns nothing.
	_, gen := kv.hint.skip(h.at())
	kv.hint.forget()
	kv.hint.learn(gen, h.at()+int64(time.Hour))
	if skip, _ := kv.hint.skip(h.at()); skip {
		t.Fatal("a stale scan taught the hint")
	}
	// A restored snapshot forgets it too.
	_, gen = kv.hint.skip(h.at())
	kv.hint.learn(gen, h.at()+int64(time.Hour))
	if skip, _ := kv.hint.skip(h.at()); !skip {
		t.Fatal("learn did not take")
	}
	if err := kv.restored(h.eng); err != nil {
		t.Fatal(err)
	}
	if skip, _ := kv.hint.skip(h.at()); skip {
		t.Fatal("a restore left the hint in place")
	}
}

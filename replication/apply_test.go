package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// crashingEngine fails every Write from its failAt-th on (counting from 1),
// as a process that died there would never write again; 0 never fails.
type crashingEngine struct {
	Engine
	writes atomic.Int64
	failAt int64
}

var errCrashed = errors.New("test: engine write failed")

func (e *crashingEngine) Write(ctx context.Context, b *Batch) error {
	if n := e.writes.Add(1); e.failAt > 0 && n >= e.failAt {
		return errCrashed
	}
	return e.Engine.Write(ctx, b)
}

// restoreCmd is one restore entry of n tiny entries, every one with an
// expiry (two engine writes each, plus its change-log copy).
func restoreCmd(t *testing.T, n int, tag string) []byte {
	t.Helper()
	expiry := time.Now().Add(time.Hour).UnixNano()
	r := &gridpb.RestoreOp{}
	for i := range n {
		v := []byte(fmt.Sprintf("v-%s-%d", tag, i))
		r.Entries = append(r.Entries, &gridpb.BackupEntry{Map: "m", Key: []byte(fmt.Sprintf("k-%s-%05d", tag, i)), Value: v, Crc: Checksum(v), Expiry: expiry})
	}
	data, err := proto.Marshal(&gridpb.Command{LeaderTime: time.Now().UnixNano(), Op: &gridpb.Command_Restore{Restore: r}})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func putData(t *testing.T, key string) []byte {
	t.Helper()
	data, err := proto.Marshal(putCmd(time.Now().UnixNano(), key, "v", 0))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func newTestSM(t *testing.T, eng Engine, fatal func(error)) *stateMachine {
	t.Helper()
	if err := openIntent(context.Background(), eng, 3); err != nil {
		t.Fatal(err)
	}
	app, err := newKVApplier(3, eng, WatchRetention{}, newChecks(), &corruption{})
	if err != nil {
		t.Fatal(err)
	}
	sm, err := newStateMachine(3, eng, app, slog.New(slog.DiscardHandler), fatal)
	if err != nil {
		t.Fatal(err)
	}
	return sm
}

// bigRestore is a count of restored entries with a TTL whose engine writes
// outgrow one batch of eng (7000 on badger's small profile).
func bigRestore(eng Engine) int { return eng.MaxBatchBytes() / 168 }

// An entry whose writes exceed one engine batch (thousands of restored entries with
// a TTL: the case that stopped a whole partition) is applied in full.
func TestApplyEntryLargerThanOneEngineBatch(t *testing.T) {
	eng, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small", SyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	sm := newTestSM(t, eng, func(err error) { t.Errorf("fatal: %v", err) })
	n := bigRestore(eng)
	out := sm.ApplyBatch([]*raft.Log{
		{Index: 5, Type: raft.LogCommand, Data: putData(t, "before")},
		{Index: 6, Type: raft.LogCommand, Data: restoreCmd(t, n, "a")},
		{Index: 7, Type: raft.LogCommand, Data: putData(t, "after")},
	})
	for i, o := range out {
		if ar := o.(applyResult); ar.err != nil || !ar.res.Ok {
			t.Fatalf("entry %d: %+v", i, ar)
		}
	}
	if got := sm.Applied(); got != 7 {
		t.Fatalf("applied %d, want 7", got)
	}
	if got := countPrefixEngine(t, eng, string(mapPrefix(3, "m"))); got != n+2 {
		t.Fatalf("%d keys, want %d", got, n+2)
	}
	if got := countPrefixEngine(t, eng, string(expiryPrefix(3))); got != n {
		t.Fatalf("%d expiry index entries, want %d", got, n)
	}
	if n := countPrefixEngine(t, eng, string(intentPrefix(3))); n != 0 {
		t.Fatalf("%d intent records left", n)
	}
}

// A crash at every write of a batch committed in parts leaves, after
// restart, either the whole batch with its applied index or none of it,
// and the replay of the log then brings the replica to the same state.
func TestApplyInPartsCrashAtEveryWrite(t *testing.T) {
	// Count the writes of one clean run first.
	probe, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small"})
	if err != nil {
		t.Fatal(err)
	}
	n := bigRestore(probe)
	cmd := restoreCmd(t, n, "c")
	counter := &crashingEngine{Engine: probe}
	newTestSM(t, counter, func(err error) { t.Errorf("fatal: %v", err) }).ApplyBatch([]*raft.Log{{Index: 9, Type: raft.LogCommand, Data: cmd}})
	total := counter.writes.Load()
	probe.Close()
	if total < 4 {
		t.Fatalf("only %d writes: the entry did not need parts", total)
	}
	for failAt := int64(1); failAt <= total; failAt++ {
		t.Run(fmt.Sprint(failAt), func(t *testing.T) {
			eng, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small", SyncWrites: true})
			if err != nil {
				t.Fatal(err)
			}
			defer eng.Close()
			var fatals atomic.Int32
			crash := &crashingEngine{Engine: eng, failAt: failAt}
			sm := newTestSM(t, crash, func(error) { fatals.Add(1) })
			out := sm.ApplyBatch([]*raft.Log{{Index: 9, Type: raft.LogCommand, Data: cmd}})
			ar := out[0].(applyResult)
			if !errors.Is(ar.err, grid.ErrAmbiguous) || fatals.Load() != 1 || sm.Applied() != 0 {
				t.Fatalf("after a failed write: result %+v, %d fatal calls, applied %d", ar, fatals.Load(), sm.Applied())
			}
			// Restart over the same engine.
			sm2 := newTestSM(t, eng, func(err error) { t.Errorf("fatal after restart: %v", err) })
			keys := countPrefixEngine(t, eng, string(mapPrefix(3, "m")))
			switch sm2.Applied() {
			case 9:
				if keys != n {
					t.Fatalf("applied 9 with %d keys", keys)
				}
			case 0:
				if keys != 0 {
					t.Fatalf("applied 0 with %d keys", keys)
				}
			default:
				t.Fatalf("applied %d", sm2.Applied())
			}
			if n := countPrefixEngine(t, eng, string(intentPrefix(3))); n != 0 {
				t.Fatalf("%d intent records left after restart", n)
			}
			sm2.ApplyBatch([]*raft.Log{{Index: 9, Type: raft.LogCommand, Data: cmd}})
			if keys := countPrefixEngine(t, eng, string(mapPrefix(3, "m"))); sm2.Applied() != 9 || keys != n {
				t.Fatalf("after replay: applied %d, %d keys", sm2.Applied(), keys)
			}
		})
	}
}

// A failed write stops the state machine: nothing of the failed batch or
// any later one is answered as applied, the applied index stays, and no
// snapshot is taken that would claim the missing entries.
func TestApplyFailureStopsWithoutSkipping(t *testing.T) {
	eng, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small", SyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	crash := &crashingEngine{Engine: eng}
	var fatals atomic.Int32
	sm := newTestSM(t, crash, func(error) { fatals.Add(1) })
	if out := sm.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: putData(t, "k1")}}); out[0].(applyResult).err != nil {
		t.Fatal(out[0])
	}
	crash.failAt = crash.writes.Load() + 1
	out := sm.ApplyBatch([]*raft.Log{
		{Index: 2, Type: raft.LogCommand, Data: putData(t, "k2")},
		{Index: 3, Type: raft.LogCommand, Data: putData(t, "k3")},
	})
	for i, o := range out {
		if ar := o.(applyResult); !errors.Is(ar.err, grid.ErrAmbiguous) {
			t.Fatalf("entry %d of the failed batch answered %+v", i, ar)
		}
	}
	crash.failAt = 0 // the disk is back: the stopped state machine still writes nothing
	before := crash.writes.Load()
	out = sm.ApplyBatch([]*raft.Log{{Index: 4, Type: raft.LogCommand, Data: putData(t, "k4")}})
	if ar := out[0].(applyResult); !errors.Is(ar.err, grid.ErrAmbiguous) {
		t.Fatalf("entry after the failure answered %+v", ar)
	}
	if crash.writes.Load() != before || sm.Applied() != 1 || fatals.Load() != 1 {
		t.Fatalf("writes %d→%d, applied %d, %d fatal calls", before, crash.writes.Load(), sm.Applied(), fatals.Load())
	}
	if _, err := sm.Snapshot(); err == nil {
		t.Fatal("a stopped state machine took a snapshot")
	}
	// Restarted, it replays from index 2 and holds every entry.
	sm2 := newTestSM(t, eng, func(err error) { t.Errorf("fatal: %v", err) })
	if sm2.Applied() != 1 {
		t.Fatalf("restart applied %d", sm2.Applied())
	}
	sm2.ApplyBatch([]*raft.Log{
		{Index: 2, Type: raft.LogCommand, Data: putData(t, "k2")},
		{Index: 3, Type: raft.LogCommand, Data: putData(t, "k3")},
		{Index: 4, Type: raft.LogCommand, Data: putData(t, "k4")},
	})
	if n := countPrefixEngine(t, eng, string(mapPrefix(3, "m"))); n != 4 || sm2.Applied() != 4 {
		t.Fatalf("after replay: %d keys, applied %d", n, sm2.Applied())
	}
}

// Dedup records are pruned alike on replicas that cut their apply batches
// differently, also when the leader's clock jumps ahead (so that the prune
// reaches records written in the same batch).
func TestDedupPruneSameOnEveryBatchCut(t *testing.T) {
	t0 := time.Now().UnixNano()
	var logs []*raft.Log
	for i := uint64(1); i <= 600; i++ {
		at := t0 + int64(i)*int64(time.Millisecond)
		if i >= 500 {
			at = t0 + int64(20*time.Minute) // the clock jumps: records before 500 are past retention
		}
		c := putCmd(at, fmt.Sprintf("k%d", i%50), "v", 0)
		c.ClientId, c.Seq = 1, i
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: i, Type: raft.LogCommand, Data: data})
	}
	dump := func(oneBatch bool) map[string]string {
		eng, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Profile: "small"})
		if err != nil {
			t.Fatal(err)
		}
		defer eng.Close()
		sm := newTestSM(t, eng, func(err error) { t.Errorf("fatal: %v", err) })
		if oneBatch {
			sm.ApplyBatch(logs)
		} else {
			for _, l := range logs {
				sm.ApplyBatch([]*raft.Log{l})
			}
		}
		v, err := eng.NewView()
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		out := map[string]string{}
		if err := v.Iterate(groupPrefix(3), nil, func(k, val []byte) (bool, error) {
			out[string(k)] = string(val)
			return true, nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := dump(true), dump(false)
	if len(a) != len(b) {
		t.Fatalf("one batch left %d keys, one entry per batch %d", len(a), len(b))
	}
	for k, v := range a {
		if b[k] != v {
			t.Fatalf("key %x differs between the two batch cuts", k)
		}
	}
	if n := countPrefixIn(a, dedupPrefix(3)); n >= 500 {
		t.Fatalf("%d dedup records left: the prune did not run", n)
	}
}

func countPrefixIn(m map[string]string, prefix []byte) int {
	n := 0
	for k := range m {
		if len(k) >= len(prefix) && k[:len(prefix)] == string(prefix) {
			n++
		}
	}
	return n
}

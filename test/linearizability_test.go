package test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// history records operations from concurrent workers.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in kvInput, call int64, out kvOutput) {
	in.call, out.ret = call, h.now()
	h.record(client, in, call, out, out.unknown)
}

// record adds an operation of any model; an unknown outcome may take effect
// at any point after its call, so it never returns.
func (h *history) record(client int, in any, call int64, out any, unknown bool) {
	ret := h.now()
	if unknown {
		ret = math.MaxInt64
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// TestLinearizableUnderKill runs concurrent Put/Get/CAS clients against three
// node processes while nodes are SIGKILLed and restarted, checks the history
// with porcupine, checks every acknowledged write is present, and checks the
// replicas of every partition hold the same data at the same applied index.
func TestLinearizableUnderKill(t *testing.T) {
	duration := 8 * time.Second
	if *long {
		duration = 90 * time.Second
	}
	lc, c := startCluster(t, 8, "lin", "acks")
	ctx, cancel := context.WithTimeout(context.Background(), duration+3*time.Minute)
	defer cancel()

	h := &history{start: time.Now()}
	keys := []string{"a", "b", "c", "d", "e"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	lin := c.Map("lin")
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runWorker(ctx, w, lin, keys, h, stop)
		}()
	}

	// Acknowledged-writes workload: unique keys written once each.
	acks := &ackWriter{m: c.Map("acks")}
	wg.Add(1)
	go func() {
		defer wg.Done()
		acks.run(ctx, stop)
	}()

	// Nemesis: SIGKILL one node at a time and restart it.
	ids := lc.IDs()
	nemesis := killLoop(ctx, t, lc, stop, func(i int) string { return ids[i%len(ids)] })

	time.Sleep(duration)
	close(stop)
	kills := <-nemesis
	wg.Wait()
	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			if err := lc.StartNode(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}

	// 1. Linearizability.
	checkLinearizable(t, h, fmt.Sprintf("%d node kills", kills))

	// 2. Every acknowledged write is present.
	acks.check(ctx, t)

	// 3. Replicas converge to equal content at the same applied index.
	checkReplicasEqual(ctx, t, lc, 8, "lin", "acks")
}

// keyEpoch is how long a worker's keys keep their names.
const keyEpoch = 10 * time.Second

// runWorker issues random puts, gets, get-then-CAS and deletes on keys until stop
// closes, recording each in h. With ttls given, half the puts carry one of
// them, picked at random.
func runWorker(ctx context.Context, w int, m *client.Map, keys []string, h *history, stop <-chan struct{}, ttls ...time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(w), 42))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		// Keys are renamed every keyEpoch of history time: an operation of
		// unknown outcome stays open until the end of its key's history, so
		// short histories per key keep the check tractable on long runs.
		key := fmt.Sprintf("%s@%d", keys[rng.IntN(len(keys))], h.now()/int64(keyEpoch))
		val := fmt.Sprintf("w%d-%d", w, i)
		opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		switch r := rng.IntN(10); {
		case r == 9:
			call := h.now()
			_, err := m.Delete(opCtx, []byte(key))
			h.add(w, kvInput{kind: opDelete, key: key}, call, kvOutput{unknown: err != nil})
		case r < 3:
			var opts []client.WriteOption
			var ttl time.Duration
			if len(ttls) > 0 && rng.IntN(2) == 0 {
				ttl = ttls[rng.IntN(len(ttls))]
				opts = append(opts, client.WithTTL(ttl))
			}
			call := h.now()
			_, err := m.Put(opCtx, []byte(key), []byte(val), opts...)
			h.add(w, kvInput{kind: opPut, key: key, value: val, ttl: int64(ttl)}, call, kvOutput{unknown: err != nil})
		case r < 7:
			call := h.now()
			v, _, err := m.Get(opCtx, []byte(key))
			switch {
			case err == nil:
				h.add(w, kvInput{kind: opGet, key: key}, call, kvOutput{value: string(v)})
			case errors.Is(err, client.ErrNotFound):
				h.add(w, kvInput{kind: opGet, key: key}, call, kvOutput{value: ""})
			} // a failed read has no effect: leave it out
		default:
			call := h.now()
			cur, ver, err := m.Get(opCtx, []byte(key))
			if errors.Is(err, client.ErrNotFound) {
				cur, ver, err = nil, 0, nil
			}
			if err != nil {
				break
			}
			h.add(w, kvInput{kind: opGet, key: key}, call, kvOutput{value: string(cur)})
			call = h.now()
			swapped, _, err := m.CompareAndSwap(opCtx, []byte(key), ver, []byte(val))
			h.add(w, kvInput{kind: opCAS, key: key, value: val, expected: string(cur)}, call, kvOutput{swapped: swapped, unknown: err != nil})
		}
		cancel()
	}
}

// ackWriter writes unique keys (each its own value) until stop closes and
// remembers which writes were acknowledged; check then finds every one.
type ackWriter struct {
	m      *client.Map
	acked  []string
	failed int // failed or of unknown outcome: not checked
}

// run writes until stop closes; the caller waits for it before check.
func (a *ackWriter) run(ctx context.Context, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		k := fmt.Sprintf("ack-%05d", i)
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := a.m.Put(wctx, []byte(k), []byte(k))
		wcancel()
		if err == nil {
			a.acked = append(a.acked, k)
		} else {
			a.failed++
		}
	}
}

// check reads every acknowledged key back (retrying reads for a while)
// and fails the test if one is missing or none was acknowledged.
func (a *ackWriter) check(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, k := range a.acked {
		var got []byte
		eventually(t, 30*time.Second, func() error {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			v, _, err := a.m.Get(rctx, []byte(k))
			got = v
			return err
		})
		if string(got) != k {
			t.Fatalf("acknowledged write %s lost: read %q", k, got)
		}
	}
	t.Logf("acknowledged writes: all %d present (%d failed or of unknown outcome, not checked)", len(a.acked), a.failed)
	if len(a.acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
}

// killLoop SIGKILLs the node pick names (pick gets the round number; "" skips
// the round) every 1.5 s and restarts it 1.5 s later, until stop closes;
// then it sends the number of kills.
func killLoop(ctx context.Context, t *testing.T, lc *localcluster.Cluster, stop <-chan struct{}, pick func(round int) string) <-chan int {
	done := make(chan int, 1)
	go func() {
		kills := 0
		defer func() { done <- kills }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(1500 * time.Millisecond):
			}
			id := pick(i)
			if id == "" {
				continue
			}
			if err := lc.Kill(id); err != nil {
				t.Errorf("kill %s: %v", id, err)
				return
			}
			kills++
			select {
			case <-stop:
			case <-time.After(1500 * time.Millisecond):
			}
			if err := lc.StartNode(ctx, id); err != nil {
				t.Errorf("restart %s: %v", id, err)
				return
			}
		}
	}()
	return done
}

// checkLinearizable checks a recorded history with porcupine and fails the
// test (leaving a visualization) if it is not linearizable.
func checkLinearizable(t *testing.T, h *history, what string) {
	t.Helper()
	checkHistory(t, h, kvModel(), what)
}

// checkHistory checks a history against model with porcupine.
func checkHistory(t *testing.T, h *history, model porcupine.Model, what string) {
	t.Helper()
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	h.mu.Unlock()
	res, info := porcupine.CheckOperationsVerbose(model, ops, 5*time.Minute)
	unknown := 0
	for _, op := range ops {
		if op.Return == math.MaxInt64 {
			unknown++
		}
	}
	t.Logf("history: %d operations (%d ambiguous), %s; porcupine: %s", len(ops), unknown, what, res)
	if res != porcupine.Ok {
		if len(ops) <= 200_000 { // drawing a longer one takes longer than the check
			path := filepath.Join(os.TempDir(), fmt.Sprintf("zerogrid-linearizability-%d.html", time.Now().Unix()))
			if err := porcupine.VisualizePath(model, info, path); err == nil {
				t.Logf("visualization: %s", path)
			}
		}
		t.Fatalf("history is not linearizable (porcupine: %s)", res)
	}
	if len(ops) < 50 {
		t.Fatalf("only %d operations recorded: the workload did not run", len(ops))
	}
}

// checkReplicasEqual waits until every replica of every partition has
// applied the same index, then compares their content through stale reads
// served by each replica itself.
func checkReplicasEqual(ctx context.Context, t *testing.T, lc nodeSet, partitions int, maps ...string) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		return replicasEqual(ctx, lc, partitions, maps)
	})
	t.Logf("replicas of all %d partitions equal at the same applied index", partitions)
}

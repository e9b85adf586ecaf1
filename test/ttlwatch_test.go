package test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// collector runs a watcher's Next loop and keeps what it delivered.
type collector struct {
	w       *client.Watcher
	mu      sync.Mutex
	changes map[int][]client.Change
	err     error
	done    chan struct{}
}

func collect(ctx context.Context, w *client.Watcher) *collector {
	col := &collector{w: w, changes: map[int][]client.Change{}, done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for {
			ch, err := w.Next(ctx)
			col.mu.Lock()
			if err != nil {
				col.err = err
				col.mu.Unlock()
				return
			}
			col.changes[ch.Partition] = append(col.changes[ch.Partition], ch)
			col.mu.Unlock()
		}
	}()
	return col
}

func (col *collector) partition(p int) []client.Change {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]client.Change(nil), col.changes[p]...)
}

// replicaLog reads a partition's whole retained change log (every map,
// every key) from one replica, straight from its Watch service, until it
// has reached version upTo. It fails if the replica no longer has the
// history from version 1.
func replicaLog(ctx context.Context, addr string, mapName string, part int, upTo uint64) ([]*gridpb.WatchChange, error) {
	conn, err := grpc.NewClient(addr, clientCreds)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := gridpb.NewWatchClient(conn).Watch(sctx, &gridpb.WatchRequest{Map: mapName, Partition: uint32(part), FromVersion: 1})
	if err != nil {
		return nil, err
	}
	var out []*gridpb.WatchChange
	for {
		resp, err := st.Recv()
		if err != nil {
			return nil, fmt.Errorf("log of partition %d at %s: %w", part, addr, err)
		}
		if resp.OldestVersion != 1 {
			return nil, fmt.Errorf("partition %d at %s retains history from %d only: the test cannot check for gaps", part, addr, resp.OldestVersion)
		}
		out = append(out, resp.Changes...)
		if resp.ProgressVersion >= upTo {
			return out, nil
		}
	}
}

// partitionApplied is the applied index the replicas of each partition
// agree on (replicasEqual has checked they do).
func partitionApplied(ctx context.Context, lc *localcluster.Cluster) (map[int]uint64, error) {
	out := map[int]uint64{}
	for _, id := range lc.IDs() {
		conn, err := grpc.NewClient(lc.Addr(id), clientCreds)
		if err != nil {
			return nil, err
		}
		st, err := gridpb.NewAdminClient(conn).Status(ctx, &gridpb.StatusRequest{})
		conn.Close()
		if err != nil {
			return nil, err
		}
		for _, g := range st.Groups {
			if g.Partition >= 0 {
				out[int(g.Partition)] = max(out[int(g.Partition)], g.AppliedIndex)
			}
		}
	}
	return out, nil
}

type ackedWrite struct {
	key     string
	version uint64
	del     bool
}

// TestTTLAndWatchAcrossLeaderKill writes (puts, deletes, puts with a TTL)
// while the node leading a partition, then each other node, is SIGKILLed
// and restarted, with
// a watcher following the whole map from version 1. It checks that:
//   - keys written with a TTL before the kills keep the same expiry after
//     them, vanish from reads once it passes, and are deleted through Raft
//     (an expire event in every replica's identical change log);
//   - the watcher delivered, per partition, exactly the change log the
//     replicas hold: every change once, in version order, no gap, no
//     duplicate, including every acknowledged write.
func TestTTLAndWatchAcrossLeaderKill(t *testing.T) {
	const parts = 4
	lc, c := startCluster(t, parts, "tw")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("tw")
	eventually(t, 30*time.Second, func() error {
		_, err := m.Put(ctx, []byte("warmup"), []byte("x"))
		return err
	})

	// The watcher has a client of its own that counts its reconnections.
	resumes := &countingHandler{msg: "client: watch stream broke; resuming"}
	wc, err := dialCluster(ctx, lc.Addrs(), client.WithLogger(slog.New(resumes)))
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	w, err := wc.Map("tw").Watch(ctx, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	col := collect(ctx, w)

	// Keys with a TTL long enough to outlive the kills.
	const ttl = 20 * time.Second
	expiry := map[string]time.Time{}
	for i := range 8 {
		k := fmt.Sprintf("ttl-%d", i)
		if _, err := m.Put(ctx, []byte(k), []byte("short-lived"), client.WithTTL(ttl)); err != nil {
			t.Fatal(err)
		}
		e, err := m.GetEntry(ctx, []byte(k))
		if err != nil || e.Expiry.IsZero() {
			t.Fatalf("ttl key %s: %+v %v", k, e, err)
		}
		expiry[k] = e.Expiry
	}

	// Writer: puts, deletes of earlier keys, and short TTL puts.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var acked []ackedWrite
	ambiguous := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			var aw ackedWrite
			var err error
			switch {
			case i%10 == 9:
				aw = ackedWrite{key: fmt.Sprintf("w-%05d", i-5), del: true}
				var existed bool
				existed, err = m.Delete(wctx, []byte(aw.key))
				if err == nil && !existed {
					aw.key = "" // nothing to see
				}
			case i%7 == 6:
				aw.key = fmt.Sprintf("w-%05d", i)
				aw.version, err = m.Put(wctx, []byte(aw.key), []byte("brief"), client.WithTTL(time.Second))
			default:
				aw.key = fmt.Sprintf("w-%05d", i)
				aw.version, err = m.Put(wctx, []byte(aw.key), []byte(aw.key))
			}
			wcancel()
			switch {
			case err != nil:
				ambiguous++
			case aw.key != "":
				acked = append(acked, aw)
			}
		}
	}()

	// Nemesis: SIGKILL the leader of partition 0 and restart it, then each
	// other node in turn, so that every node the watcher streams from dies
	// once (a stream resumes on another replica).
	tab, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victims := []string{tab.Partitions[0].Leader}
	if victims[0] == "" {
		victims[0] = lc.IDs()[0]
	}
	for _, id := range lc.IDs() {
		if id != victims[0] {
			victims = append(victims, id)
		}
	}
	kills := 0
	for _, victim := range victims {
		time.Sleep(1500 * time.Millisecond)
		if err := lc.Kill(victim); err != nil {
			t.Fatal(err)
		}
		kills++
		time.Sleep(1500 * time.Millisecond)
		if err := lc.StartNode(ctx, victim); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d writes acknowledged, %d failed or ambiguous, %d leader kills", len(acked), ambiguous, kills)
	if len(acked) < 20 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}

	// TTL keys written before the kills expire when they said they would.
	checkedExpiry := 0
	for k, want := range expiry {
		e, err := m.GetEntry(ctx, []byte(k))
		if errors.Is(err, client.ErrNotFound) && !time.Now().Before(want) {
			continue // already past its expiry
		}
		if err != nil {
			t.Fatalf("ttl key %s after the leader changes (expiry %v, now %v): %v", k, want, time.Now(), err)
		}
		if !e.Expiry.Equal(want) {
			t.Fatalf("ttl key %s: expiry %v before the leader changes, %v after", k, want, e.Expiry)
		}
		checkedExpiry++
	}
	t.Logf("%d of %d TTL keys still live after the kills kept their expiry", checkedExpiry, len(expiry))
	var latest time.Time
	for _, e := range expiry {
		latest = later(latest, e)
	}
	time.Sleep(time.Until(latest) + 10*time.Millisecond)
	for k := range expiry {
		if _, _, err := m.Get(ctx, []byte(k)); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("ttl key %s readable after its expiry: %v", k, err)
		}
	}
	if err := m.Scan(ctx, []byte("ttl-"), func(e client.Entry) error {
		return fmt.Errorf("scan returned expired key %s", e.Key)
	}); err != nil {
		t.Fatal(err)
	}

	// Expired keys are deleted through Raft: the watcher sees an expire
	// event for each (and replicas converge, checked below).
	eventually(t, 30*time.Second, func() error {
		seen := map[string]bool{}
		for p := range parts {
			for _, ch := range col.partition(p) {
				for _, e := range ch.Events {
					if e.Type == client.EventExpire {
						seen[string(e.Key)] = true
					}
				}
			}
		}
		for k := range expiry {
			if !seen[k] {
				return fmt.Errorf("no expire event for %s yet", k)
			}
		}
		return nil
	})
	checkReplicasEqual(ctx, t, lc, parts, "tw")
	applied, err := partitionApplied(ctx, lc)
	if err != nil {
		t.Fatal(err)
	}

	// Every replica holds the same change log, and the watcher delivered
	// exactly it.
	delivered := map[string]map[uint64]client.EventType{} // key → version → type
	for p := range parts {
		var logs [][]*gridpb.WatchChange
		for _, id := range lc.IDs() {
			l, err := replicaLog(ctx, lc.Addr(id), "tw", p, applied[p])
			if err != nil {
				t.Fatal(err)
			}
			logs = append(logs, l)
		}
		for i := 1; i < len(logs); i++ {
			if !sameLog(logs[0], logs[i]) {
				t.Fatalf("partition %d: change logs of %s and %s differ", p, lc.IDs()[0], lc.IDs()[i])
			}
		}
		want := logs[0]
		var got []client.Change
		eventually(t, 30*time.Second, func() error {
			got = col.partition(p)
			if len(got) < len(want) {
				return fmt.Errorf("partition %d: watcher has %d of %d changes", p, len(got), len(want))
			}
			return nil
		})
		if len(got) != len(want) {
			t.Fatalf("partition %d: watcher delivered %d changes, the log has %d (duplicates)", p, len(got), len(want))
		}
		for i := range want {
			if err := sameChange(want[i], got[i]); err != nil {
				t.Fatalf("partition %d change %d: %v", p, i, err)
			}
			for _, e := range got[i].Events {
				if delivered[string(e.Key)] == nil {
					delivered[string(e.Key)] = map[uint64]client.EventType{}
				}
				delivered[string(e.Key)][got[i].Version] = e.Type
			}
		}
	}
	for _, aw := range acked {
		vs := delivered[aw.key]
		if aw.del {
			found := false
			for _, typ := range vs {
				found = found || typ == client.EventDelete
			}
			if !found {
				t.Fatalf("acknowledged delete of %s not delivered", aw.key)
			}
			continue
		}
		if typ, ok := vs[aw.version]; !ok || typ != client.EventPut {
			t.Fatalf("acknowledged put of %s at version %d not delivered (got %v)", aw.key, aw.version, vs)
		}
	}
	t.Logf("watcher delivered every change of %d partitions exactly once, in order, across %d leader kills and %d stream resumptions",
		parts, kills, resumes.n.Load())
	if resumes.n.Load() == 0 {
		t.Fatal("no watch stream broke: the kills did not exercise resumption")
	}
}

// countingHandler counts log records with one message.
type countingHandler struct {
	msg string
	n   atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func sameLog(a, b []*gridpb.WatchChange) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sameChange(want *gridpb.WatchChange, got client.Change) error {
	if want.Version != got.Version || len(want.Events) != len(got.Events) {
		return fmt.Errorf("log has version %d with %d events, watcher %d with %d", want.Version, len(want.Events), got.Version, len(got.Events))
	}
	for i, e := range want.Events {
		g := got.Events[i]
		if int(e.Type) != int(g.Type) || string(e.Key) != string(g.Key) || string(e.Value) != string(g.Value) {
			return fmt.Errorf("version %d event %d: log %s %q=%q, watcher %s %q=%q", want.Version, i, e.Type, e.Key, e.Value, g.Type, g.Key, g.Value)
		}
	}
	return nil
}

// TestTTLReadsCompactedWatchAndBadInput checks, on a cluster that keeps a
// short watch history: a TTL key's visibility to Get, Scan, transactions
// and CAS before and after its expiry; the clear error of a watch older
// than the history and resuming from the oldest version it names; bad
// TTLs and bad watches refused with nothing written; and the CLI.
func TestTTLReadsCompactedWatchAndBadInput(t *testing.T) {
	lc, c := startClusterArgs(t, 2, []string{"--watch-history", "40"}, "h")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := c.Map("h")
	eventually(t, 30*time.Second, func() error {
		_, err := m.Put(ctx, []byte("{t}-warmup"), []byte("x"))
		return err
	})

	// Visibility of a TTL key, before and after its expiry.
	k := []byte("{t}-ttl")
	if _, err := m.Put(ctx, k, []byte("v"), client.WithTTL(1500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	e, err := m.GetEntry(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	if err := m.Scan(ctx, k, func(client.Entry) error { scanned++; return nil }); err != nil || scanned != 1 {
		t.Fatalf("scan of a live TTL key: %d entries, %v", scanned, err)
	}
	if ok, _, err := m.Txn(ctx).If(client.Exists(k)).Commit(); err != nil || !ok {
		t.Fatalf("txn Exists on a live TTL key: %v %v", ok, err)
	}
	time.Sleep(time.Until(e.Expiry) + 10*time.Millisecond)
	if _, _, err := m.Get(ctx, k); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get after expiry: %v", err)
	}
	if _, err := m.GetEntry(ctx, k, client.Stale()); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("stale get after expiry: %v", err)
	}
	scanned = 0
	if err := m.Scan(ctx, k, func(client.Entry) error { scanned++; return nil }); err != nil || scanned != 0 {
		t.Fatalf("scan after expiry: %d entries, %v", scanned, err)
	}
	if ok, _, err := m.Txn(ctx).If(client.Missing(k)).Commit(); err != nil || !ok {
		t.Fatalf("txn Missing after expiry: %v %v", ok, err)
	}
	if ok, _, err := m.CompareAndSwap(ctx, k, 0, []byte("again"), client.WithTTL(time.Minute)); err != nil || !ok {
		t.Fatalf("cas expecting absent after expiry: %v %v", ok, err)
	}

	// Bad TTLs: refused with a clear error, nothing written.
	for _, ttl := range []time.Duration{-time.Second, time.Nanosecond, grid.MaxTTL + time.Hour} {
		if _, err := m.Put(ctx, []byte("{t}-bad"), []byte("x"), client.WithTTL(ttl)); !errors.Is(err, client.ErrBadRequest) {
			t.Fatalf("put with ttl %v: %v", ttl, err)
		}
	}
	conn, err := grpc.NewClient(lc.Addrs()[0], clientCreds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := gridpb.NewKVClient(conn)
	hdr := &gridpb.WriteHeader{Map: "h", ClientId: 7, Seq: 1}
	_, err = kv.Put(ctx, &gridpb.PutRequest{Header: hdr, Key: []byte("{t}-bad"), Value: []byte("x"), TtlNanos: -5})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ttl") {
		t.Fatalf("raw put with a negative ttl: %v", err)
	}
	_, err = kv.Txn(ctx, &gridpb.TxnRequest{Header: hdr, ThenOps: []*gridpb.TxnWrite{
		{Key: []byte("{t}-bad"), Value: []byte("x")}, {Key: []byte("{t}-bad2"), Delete: true, TtlNanos: int64(time.Second)},
	}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("raw txn with a ttl on a delete: %v", err)
	}
	if _, _, err := m.Get(ctx, []byte("{t}-bad")); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("a refused write left a value: %v", err)
	}

	// Fill the partition's history past its retention.
	for i := range 150 {
		if _, err := m.Put(ctx, []byte(fmt.Sprintf("{t}-%03d", i)), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	w, err := m.Watch(ctx, []byte("{t}-"), 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Next(ctx)
	w.Close()
	var ce *client.CompactedError
	if !errors.Is(err, client.ErrCompacted) || !errors.As(err, &ce) || ce.Oldest <= 1 || ce.Requested != 1 {
		t.Fatalf("watch from version 1 after compaction: %v", err)
	}
	t.Logf("compacted watch: %v", err)
	w, err = m.Watch(ctx, []byte("{t}-"), ce.Oldest)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := w.Next(ctx)
	w.Close()
	if err != nil || ch.Version < ce.Oldest || ch.Partition != ce.Partition {
		t.Fatalf("watch from the oldest retained version %d: %+v %v", ce.Oldest, ch, err)
	}

	// From now: a write acknowledged after Watch returns is delivered.
	w, err = m.Watch(ctx, []byte("{t}-now"), 0)
	if err != nil {
		t.Fatal(err)
	}
	v, err := m.Put(ctx, []byte("{t}-now"), []byte("seen"))
	if err != nil {
		t.Fatal(err)
	}
	nctx, ncancel := context.WithTimeout(ctx, 30*time.Second)
	ch, err = w.Next(nctx)
	ncancel()
	w.Close()
	if err != nil || ch.Version != v || len(ch.Events) != 1 || string(ch.Events[0].Value) != "seen" {
		t.Fatalf("watch from now, then a put at version %d: %+v %v", v, ch, err)
	}

	// Bad watches.
	if _, err := c.Watch(ctx, "no such map!", nil, 0); !errors.Is(err, client.ErrInvalidMapName) {
		t.Fatalf("watch with a bad map name: %v", err)
	}
	if _, err := m.WatchFrom(ctx, nil, client.Cursor{99: 1}); !errors.Is(err, client.ErrBadRequest) && !errors.Is(err, grid.ErrBadPartition) {
		t.Fatalf("watch from a cursor naming a partition out of range: %v", err)
	}
	w, err = c.Watch(ctx, "nosuchmap", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Next(ctx)
	w.Close()
	if !errors.Is(err, client.ErrUnknownMap) {
		t.Fatalf("watch of a map that does not exist: %v", err)
	}

	// CLI: put --ttl, and watch from a cursor, printing events.
	addr := strings.Join(lc.Addrs(), ",")
	out, err := exec.CommandContext(ctx, binary, "put", "--ttl", "30s", "h", "{t}-cli", "hello", "--addr", addr).CombinedOutput()
	if err != nil {
		t.Fatalf("zerogrid put --ttl: %v\n%s", err, out)
	}
	if e, err := m.GetEntry(ctx, []byte("{t}-cli")); err != nil || e.Expiry.IsZero() {
		t.Fatalf("key written by put --ttl: %+v %v", e, err)
	}
	cmd := exec.CommandContext(ctx, binary, "watch", "h", "{t}-c", "--cursor", fmt.Sprintf("%d:%d", ce.Partition, ce.Oldest), "--timeout", "3s", "--addr", addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil || !strings.Contains(string(out), "put\t{t}-cli\thello") || !strings.Contains(stderr.String(), "resume with: --cursor") {
		t.Fatalf("zerogrid watch: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	cmd = exec.CommandContext(ctx, binary, "watch", "h", "{t}-", "--from", "1", "--addr", addr)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "compacted") {
		t.Fatalf("zerogrid watch --from 1 after compaction: %v\n%s", err, out)
	}
}

package test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

// lockEvent is one line a lockworker printed.
type lockEvent struct {
	kind    string // ACQUIRED, WROTE, REFUSED, UNKNOWN, RELEASED, ...
	worker  string
	token   uint64
	i       int
	version uint64
	line    string
}

func parseLockEvent(line string) lockEvent {
	f := strings.Fields(line)
	ev := lockEvent{line: line}
	if len(f) < 2 {
		return ev
	}
	ev.kind, ev.worker = f[0], f[1]
	if len(f) > 2 {
		ev.token, _ = strconv.ParseUint(f[2], 10, 64)
	}
	if len(f) > 3 {
		ev.i, _ = strconv.Atoi(f[3])
	}
	if len(f) > 4 && ev.kind == "WROTE" {
		ev.version, _ = strconv.ParseUint(f[4], 10, 64)
	}
	return ev
}

// lockWorkers runs lockworker processes and collects their events.
type lockWorkers struct {
	t       *testing.T
	events  chan lockEvent
	procs   map[string]*exec.Cmd
	wg      sync.WaitGroup // the stdout readers
	seen    []lockEvent    // every event consumed so far, in order
	stopped bool
}

func startLockWorkers(t *testing.T, bin string, addrs []string, n int) *lockWorkers {
	t.Helper()
	w := &lockWorkers{t: t, events: make(chan lockEvent, 1<<16), procs: map[string]*exec.Cmd{}}
	for k := 1; k <= n; k++ {
		id := fmt.Sprintf("w%d", k)
		cmd := exec.Command(bin, "--addr", strings.Join(addrs, ","), "--id", id, "--ttl", "1s")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.procs[id] = cmd
		w.wg.Add(1)
		go func() { // owned: ends when the worker exits; stop waits for it
			defer w.wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				w.events <- parseLockEvent(sc.Text())
			}
		}()
	}
	t.Cleanup(w.stop)
	return w
}

// stop ends every worker (continuing a stopped one first), waits, and
// collects the remaining events. A second call does nothing.
func (w *lockWorkers) stop() {
	if w.stopped {
		return
	}
	w.stopped = true
	for _, cmd := range w.procs {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	// Read every line before Wait, which closes the pipes.
	read := make(chan struct{})
	go func() { w.wg.Wait(); close(read) }()
	select {
	case <-read:
	case <-time.After(20 * time.Second):
		w.t.Errorf("workers ignored SIGTERM for 20s; killing them")
		for _, cmd := range w.procs {
			_ = cmd.Process.Kill()
		}
		<-read
	}
	for _, cmd := range w.procs {
		_ = cmd.Wait()
	}
	close(w.events)
	for ev := range w.events {
		w.seen = append(w.seen, ev)
	}
}

// waitFor consumes events until one matches, within budget.
func (w *lockWorkers) waitFor(what string, budget time.Duration, match func(lockEvent) bool) lockEvent {
	w.t.Helper()
	deadline := time.After(budget)
	for {
		select {
		case ev := <-w.events:
			w.seen = append(w.seen, ev)
			if match(ev) {
				return ev
			}
		case <-deadline:
			w.t.Fatalf("no %s within %v; last events:\n%s", what, budget, lastLines(w.seen, 30))
		}
	}
}

func lastLines(evs []lockEvent, n int) string {
	var b strings.Builder
	for _, ev := range evs[max(0, len(evs)-n):] {
		b.WriteString(ev.line + "\n")
	}
	return b.String()
}

// TestLockFencingWithPausedHolderAndLeaderKill: three client processes
// compete for one lock and write to a guarded resource with their fencing
// tokens. One holder is SIGSTOPped while it holds the lock, its lease runs
// out, another client takes the lock and writes; the paused one is
// continued and tries to write with its old token. Then the leader of the
// lock's partition is SIGKILLed while the clients go on. From the guarded
// resource's point of view: the tokens of accepted writes never decrease
// (no write with a token older than an accepted one was ever accepted, so
// no two holders wrote with valid tokens at once), the paused client's stale
// write was refused, every acknowledged write is there and no refused one.
func TestLockFencingWithPausedHolderAndLeaderKill(t *testing.T) {
	const partitions = 4
	lc, c := startCluster(t, partitions, "guard")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	worker := filepath.Join(t.TempDir(), "lockworker")
	if out, err := exec.Command("go", "build", "-o", worker, "./lockworker").CombinedOutput(); err != nil {
		t.Fatalf("build lockworker: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, func() error {
		_, err := c.Map("guard").Put(ctx, []byte("ready"), []byte("1"))
		return err
	})

	w := startLockWorkers(t, worker, lc.Addrs(), 3)

	// 1. Pause a holder right after its first accepted write.
	first := w.waitFor("first write", 30*time.Second, func(ev lockEvent) bool { return ev.kind == "WROTE" && ev.i == 0 })
	paused, pausedTok := first.worker, first.token
	if err := syscall.Kill(w.procs[paused].Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGSTOP %s holding token %d", paused, pausedTok)
	// Its lease runs out; another client takes the lock and writes.
	next := w.waitFor("a write by the next holder", 30*time.Second, func(ev lockEvent) bool {
		return ev.kind == "WROTE" && ev.worker != paused && ev.token > pausedTok
	})
	t.Logf("%s acquired token %d and wrote while %s was stopped", next.worker, next.token, paused)
	if err := syscall.Kill(w.procs[paused].Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Resumed, it writes with its old token: the resource refuses.
	w.waitFor("the paused client's stale write refused", 30*time.Second, func(ev lockEvent) bool {
		return ev.kind == "REFUSED" && ev.worker == paused && ev.token == pausedTok
	})
	t.Logf("SIGCONT %s: its write with token %d was refused", paused, pausedTok)

	// 2. SIGKILL the leader of the lock's partition; the lock goes on.
	lockPart := grid.LockPartition("res", partitions)
	var leader string
	eventually(t, 20*time.Second, func() error {
		tbl, err := c.Table(ctx)
		if err != nil {
			return err
		}
		if leader = tbl.Partitions[lockPart].Leader; leader == "" {
			return fmt.Errorf("partition %d has no known leader", lockPart)
		}
		return nil
	})
	before := w.waitFor("an acquisition before the kill", 30*time.Second, func(ev lockEvent) bool { return ev.kind == "ACQUIRED" })
	if err := lc.Kill(leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s, leader of the lock's partition %d (last token %d)", leader, lockPart, before.token)
	after := w.waitFor("a write under a lock granted after the kill", 45*time.Second, func(ev lockEvent) bool {
		return ev.kind == "WROTE" && ev.token > before.token
	})
	t.Logf("%s wrote with token %d after the kill", after.worker, after.token)
	if err := lc.StartNode(ctx, leader); err != nil {
		t.Fatal(err)
	}
	// Some more rounds with all three nodes back.
	last := after.token
	for round := 0; round < 4; round++ {
		ev := w.waitFor("a write by a new holder after the restart", 30*time.Second, func(ev lockEvent) bool {
			return ev.kind == "WROTE" && ev.token > last
		})
		last = ev.token
	}
	w.stop()

	// 3. The resource's view: every accepted write, in version order.
	type write struct {
		key     string
		token   uint64
		version uint64
	}
	var writes []write
	eventually(t, 30*time.Second, func() error {
		writes = writes[:0]
		return c.Map("guard").Scan(ctx, []byte("log:{res}:"), func(e client.Entry) error {
			tok, err := strconv.ParseUint(string(e.Value), 10, 64)
			if err != nil {
				return fmt.Errorf("value of %s: %w", e.Key, err)
			}
			writes = append(writes, write{string(e.Key), tok, e.Version})
			return nil
		})
	})
	sort.Slice(writes, func(i, j int) bool { return writes[i].version < writes[j].version })
	holders := 0
	for i := 1; i < len(writes); i++ {
		if writes[i].token < writes[i-1].token {
			t.Errorf("accepted %s (token %d) at version %d after %s (token %d) at version %d",
				writes[i].key, writes[i].token, writes[i].version, writes[i-1].key, writes[i-1].token, writes[i-1].version)
		}
		if writes[i].token != writes[i-1].token {
			holders++
		}
	}
	present := map[string]uint64{}
	for _, wr := range writes {
		present[wr.key] = wr.version
	}
	refused := 0
	for _, ev := range w.seen {
		key := fmt.Sprintf("log:{res}:%s:%d:%d", ev.worker, ev.token, ev.i)
		switch ev.kind {
		case "WROTE":
			if v, ok := present[key]; !ok || v != ev.version {
				t.Errorf("acknowledged write %s (version %d) missing from the resource (found version %d)", key, ev.version, v)
			}
		case "REFUSED":
			refused++
			if _, ok := present[key]; ok {
				t.Errorf("refused write %s is in the resource", key)
			}
		}
	}
	t.Logf("%d accepted writes by %d successive holders, %d stale writes refused, %d events", len(writes), holders+1, refused, len(w.seen))
	if t.Failed() {
		t.Logf("events:\n%s", lastLines(w.seen, len(w.seen)))
	}
}

// TestLockCLI runs `zerogrid lock NAME -- COMMAND` and `zerogrid put
// --fence`: the command gets the token, its fenced write is accepted, a
// later holder's write makes the first token stale, --try fails while the
// lock is held, and the command's exit status comes through.
func TestLockCLI(t *testing.T) {
	lc, c := startCluster(t, 2, "guard")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	eventually(t, 30*time.Second, func() error {
		_, err := c.Map("guard").Put(ctx, []byte("ready"), []byte("1"))
		return err
	})
	addr := strings.Join(lc.Addrs(), ",")
	zg := func(args ...string) (string, int) {
		cmd := exec.CommandContext(ctx, binary, args...)
		out, err := cmd.CombinedOutput()
		code := 0
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
		}
		return string(out), code
	}
	put := binary + " put guard {job}:k \"$ZEROGRID_LOCK_NAME-$ZEROGRID_FENCE_TOKEN\" --fence \"$ZEROGRID_FENCE\" --addr " + addr

	out, code := zg("lock", "job", "--ttl", "2s", "--addr", addr, "--", "sh", "-c", put+" && echo token=$ZEROGRID_FENCE_TOKEN")
	if code != 0 || !strings.Contains(out, "ok version=") {
		t.Fatalf("lock + fenced put: exit %d\n%s", code, out)
	}
	var tok1 uint64
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "token="); ok {
			tok1, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if tok1 == 0 {
		t.Fatalf("no token in the command's environment:\n%s", out)
	}

	// A second holder writes and exits 3: zerogrid lock exits 3 too.
	out, code = zg("lock", "job", "--addr", addr, "--", "sh", "-c", put+" && exit 3")
	if code != 3 {
		t.Fatalf("second holder: exit %d, want 3\n%s", code, out)
	}
	// The first token is stale now: refused, nothing written.
	out, code = zg("put", "guard", "{job}:k", "stale", "--fence", fmt.Sprintf("job:%d", tok1), "--addr", addr)
	if code != 1 || !strings.Contains(out, "stale fencing token") {
		t.Fatalf("stale fenced put: exit %d\n%s", code, out)
	}
	if v, _, err := c.Map("guard").Get(ctx, []byte("{job}:k")); err != nil || !strings.HasPrefix(string(v), "job-") || string(v) == fmt.Sprintf("job-%d", tok1) {
		t.Fatalf("value after the stale put: %q %v", v, err)
	}
	// A malformed fence is a usage error.
	if out, code = zg("put", "guard", "k", "v", "--fence", "job:zero", "--addr", addr); code != 2 {
		t.Fatalf("malformed fence: exit %d\n%s", code, out)
	}

	// While one process holds the lock, --try fails at once; when the
	// holder is told to stop, it releases the lock.
	holder := exec.CommandContext(ctx, binary, "lock", "job", "--addr", addr, "--", "sleep", "30")
	stderr, err := holder.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "holding lock job") {
	}
	if out, code = zg("lock", "job", "--try", "--addr", addr, "--", "true"); code != 1 || !strings.Contains(out, "lock held") {
		t.Fatalf("--try while held: exit %d\n%s", code, out)
	}
	_ = holder.Process.Signal(syscall.SIGTERM)
	_ = holder.Wait()
	if out, code = zg("lock", "job", "--try", "--addr", addr, "--", "true"); code != 0 {
		t.Fatalf("--try after the holder stopped: exit %d\n%s", code, out)
	}
}

package test

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestDashboard opens a node's dashboard (the ops listener's /) in
// headless Chromium: it shows the three nodes active and every partition,
// and after one node is killed (SIGKILL) it shows that node suspect, then
// dead, without a reload.
func TestDashboard(t *testing.T) {
	var browser string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("needs Chromium (Debian package chromium; .ci/run installs it)")
	}
	const parts = 8
	lc, _ := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Ops: true,
		ExtraArgs: []string{"--dead-after", "8s"}}, "kv")

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU)...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelTimeout()

	waitFor := func(what, selector string, within time.Duration) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		start := time.Now()
		if _, err := chromedp.Run(wctx, chromedp.WaitVisible(chromedp.CSS(selector))); err != nil {
			page, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("the dashboard never showed %s (%s): %v\npage:\n%s", what, selector, err, page)
		}
		t.Logf("%s: shown after %v", what, time.Since(start).Round(10*time.Millisecond))
	}
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+lc.OpsAddr("n1")+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	for _, id := range lc.IDs() {
		waitFor(id+" active", `#node-`+id+`[data-state="active"]`, 30*time.Second)
	}
	for p := range parts {
		waitFor(fmt.Sprint("partition ", p), fmt.Sprint("#part-", p), 10*time.Second)
	}
	if err := lc.Kill("n3"); err != nil {
		t.Fatal(err)
	}
	waitFor("n3 suspect", `#node-n3[data-state="suspect"]`, 20*time.Second)
	waitFor("n3 dead", `#node-n3[data-state="dead"]`, 30*time.Second)
	waitFor("n1 still active", `#node-n1[data-state="active"]`, 5*time.Second)
}

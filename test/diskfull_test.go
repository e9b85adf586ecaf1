package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestDiskFull runs a cluster on a small size-limited file system (a
// tmpfs), fills it while writers run, and checks what a user sees: writes
// refused with grid.ErrDiskFull (nothing half-written), reads and deletes
// served, status saying so, writes resuming once space is freed, and every
// acknowledged write kept on every replica.
func TestDiskFull(t *testing.T) {
	fsDir := filepath.Join(t.TempDir(), "fs")
	if err := os.MkdirAll(fsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=320m", "tmpfs", fsDir).CombinedOutput(); err != nil {
		t.Skipf("needs a size-limited file system (mount -t tmpfs as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", fsDir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", fsDir, err, out)
		}
	})
	const parts = 4
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Dir: filepath.Join(fsDir, "cluster"),
		ExtraArgs: []string{"--min-free-disk", "48MiB"}}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("kv")
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(fsDir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * int64(st.Bsize)
	}
	t.Logf("free after start: %d MiB", free()>>20)

	// Writers: unique keys, so each key's value is known.
	var mu sync.Mutex
	acked, unknown := map[string]string{}, map[string]string{}
	refused := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	value := strings.Repeat("v", 1024)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("w%d-%05d", w, i), fmt.Sprintf("%s-%d-%d", value, w, i)
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := m.Put(pctx, []byte(k), []byte(v))
				pcancel()
				mu.Lock()
				switch {
				case err == nil:
					acked[k] = v
				case errors.Is(err, grid.ErrDiskFull):
					refused++
				default:
					unknown[k] = v
				}
				mu.Unlock()
				if errors.Is(err, grid.ErrDiskFull) {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(time.Second)

	// Fill the file system to 24 MiB free, under the 48 MiB reserve.
	ballast := filepath.Join(fsDir, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, free()-24<<20); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	f.Close()
	t.Logf("ballast in: %d MiB free", free()>>20)
	var fullErr error
	eventually(t, 20*time.Second, func() error {
		_, err := m.Put(ctx, []byte("probe"), []byte("x"))
		if !errors.Is(err, grid.ErrDiskFull) {
			return fmt.Errorf("put on a full disk: %v", err)
		}
		fullErr = err
		return nil
	})
	t.Logf("refused: %v", fullErr)
	if !strings.Contains(fullErr.Error(), "free on its data disk") {
		t.Errorf("the refusal does not say why: %v", fullErr)
	}
	time.Sleep(500 * time.Millisecond) // writers meet the full disk too

	// Reads and deletes go on; status says the disk is full.
	mu.Lock()
	var someKey, someValue, delKey string
	for k, v := range acked {
		if someKey == "" {
			someKey, someValue = k, v
		} else {
			delKey = k
			break
		}
	}
	mu.Unlock()
	if got, _, err := m.Get(ctx, []byte(someKey)); err != nil || string(got) != someValue {
		t.Fatalf("linearizable read on a full disk: %v", err)
	}
	if _, err := m.Delete(ctx, []byte(delKey)); err != nil {
		t.Fatalf("delete on a full disk: %v", err)
	}
	mu.Lock()
	delete(acked, delKey)
	mu.Unlock()
	out := runCLI(t, ctx, "status", "--addr", strings.Join(lc.Addrs(), ","))
	if !strings.Contains(out, "FULL: under the 48 MiB reserve") {
		t.Errorf("status does not show the full disk:\n%s", out)
	}

	// Space returns: writes resume.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		_, err := m.Put(ctx, []byte("probe"), []byte("after"))
		return err
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("writes: %d acknowledged, %d refused for disk, %d unknown", len(acked), refused, len(unknown))
	if refused == 0 || len(acked) == 0 {
		t.Fatalf("the writers never met the full disk (refused %d, acknowledged %d)", refused, len(acked))
	}
	for k, v := range acked {
		got, _, err := m.Get(ctx, []byte(k))
		if err != nil || string(got) != v {
			t.Fatalf("acknowledged %q lost: %v", k, err)
		}
	}
	if _, _, err := m.Get(ctx, []byte(delKey)); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("the key deleted on a full disk: %v", err)
	}
	eventually(t, 30*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"kv"}) })
}

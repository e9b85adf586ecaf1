package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	mountSmallFS(t, fsDir, "320m")
	const parts = 4
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Dir: filepath.Join(fsDir, "cluster"),
		ExtraArgs: []string{"--min-free-disk", "48MiB"}}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("kv")
	free := func() int64 { return freeBytes(t, fsDir) }
	t.Logf("free after start: %d MiB", free()>>20)

	ws := runWriters(ctx, m, 4, 5*time.Second, strings.Repeat("v", 1024))
	time.Sleep(time.Second)

	// Fill the file system to 24 MiB free, under the 48 MiB reserve.
	ballast := fillTo(t, fsDir, 24<<20)
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
	var someKey, someValue, delKey string
	for k, v := range ws.any(2) {
		if someKey == "" {
			someKey, someValue = k, v
		} else {
			delKey = k
		}
	}
	if got, _, err := m.Get(ctx, []byte(someKey)); err != nil || string(got) != someValue {
		t.Fatalf("linearizable read on a full disk: %v", err)
	}
	if _, err := m.Delete(ctx, []byte(delKey)); err != nil {
		t.Fatalf("delete on a full disk: %v", err)
	}
	ws.forget(delKey)
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
	_, refused, unknown := ws.counts()
	acked := ws.stop()
	t.Logf("writes: %d acknowledged, %d refused for disk, %d unknown", len(acked), refused, unknown)
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

// mountSmallFS mounts a tmpfs of size at dir (created), unmounted at the
// end of the test; the test is skipped where mounting is not allowed.
func mountSmallFS(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("needs a size-limited file system (mount -t tmpfs as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// freeBytes is the space free to an unprivileged writer under dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fillTo allocates a ballast file in dir leaving about left bytes free,
// and returns its path (remove it to free the space).
func fillTo(t *testing.T, dir string, left int64) string {
	t.Helper()
	ballast := filepath.Join(dir, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, freeBytes(t, dir)-left); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	return ballast
}

// TestDiskFullOneNode fills the data disk of one node of three (its own
// tmpfs) while writers run: that node must stay up, hand away the
// leaderships it holds (a leader there would refuse writes), take no new
// log entries under half its reserve (instead of meeting ENOSPC halfway
// through an append or an apply), and catch up once space returns; the
// other two keep taking writes, and every acknowledged write is on every
// replica at the end.
func TestDiskFullOneNode(t *testing.T) {
	dir := t.TempDir()
	// n3's data directory is a small file system of its own.
	fsDir := filepath.Join(dir, "cluster", "n3")
	mountSmallFS(t, fsDir, "256m")
	const parts = 4
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Dir: filepath.Join(dir, "cluster"),
		ExtraArgs: []string{"--min-free-disk", "48MiB"}}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("kv")
	t.Logf("n3 free after start: %d MiB", freeBytes(t, fsDir)>>20)

	value := strings.Repeat("v", 8<<10)
	ws := runWriters(ctx, m, 4, 5*time.Second, value)
	time.Sleep(time.Second)

	// n3 down to 2 MiB free: under its 48 MiB reserve and under half of it,
	// and less than the writes that follow need.
	ackedAtFill, _, _ := ws.counts()
	ballast := fillTo(t, fsDir, 2<<20)
	t.Logf("ballast in: n3 has %d MiB free", freeBytes(t, fsDir)>>20)
	out := ""
	eventually(t, 20*time.Second, func() error {
		out = runCLI(t, ctx, "status", "--addr", strings.Join(lc.Addrs(), ","))
		if !strings.Contains(out, "FULL: under the 48 MiB reserve") {
			return fmt.Errorf("status does not show n3's full disk:\n%s", out)
		}
		return nil
	})
	// The writers run on with n3 behind until they have written four times
	// the room n3 has left, and stop (n3 must later catch up with all of it
	// within its file system's size).
	eventually(t, 60*time.Second, func() error {
		n, _, _ := ws.counts()
		if wrote := (n - ackedAtFill) * len(value); wrote < 8<<20 {
			return fmt.Errorf("%d KiB written since n3's disk filled", wrote>>10)
		}
		return nil
	})
	_, refused, unknown := ws.counts()
	acked := ws.stop()
	// Every partition takes writes: n3 leads none of them any more.
	eventually(t, 60*time.Second, func() error {
		for i := range 32 {
			k := fmt.Sprintf("probe-%d", i)
			if _, err := m.Put(ctx, []byte(k), []byte("x")); err != nil {
				return fmt.Errorf("put %s with n3's disk full: %w", k, err)
			}
			acked[k] = "x"
		}
		return nil
	})
	if !lc.Running("n3") {
		t.Fatalf("n3 exited on its full disk; its log:\n%s", tailFile(lc.LogPath("n3"), 40))
	}
	t.Logf("writes: %d acknowledged (%d before the disk filled), %d refused for disk, %d unknown", len(acked), ackedAtFill, refused, unknown)

	// Space returns: n3 catches up.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	for k, v := range acked {
		got, _, err := m.Get(ctx, []byte(k))
		if err != nil || string(got) != v {
			t.Fatalf("acknowledged %q lost: %v", k, err)
		}
	}
	eventually(t, 60*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"kv"}) })
	if !lc.Running("n3") {
		t.Fatalf("n3 exited while catching up; its log:\n%s", tailFile(lc.LogPath("n3"), 40))
	}
}

// tailFile is the last n lines of the file at path (or why it is missing).
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

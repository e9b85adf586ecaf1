package test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// containerCluster is a zerogrid cluster of containers, one node each, from
// an image holding only the static binary, on a private docker network with
// fixed addresses the test host reaches directly. Each node's data directory
// is a size-limited tmpfs on the host, bind-mounted, so the test can fill it.
type containerCluster struct {
	t       *testing.T
	name    string // network and container name prefix
	subnet  string // a.b.c (a /24)
	ids     []string
	dirs    map[string]string
	mu      sync.Mutex
	stopped map[string]bool // killed or SIGSTOPped, not yet back
}

func (c *containerCluster) IDs() []string { return c.ids }

func (c *containerCluster) Running(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.stopped[id]
}

func (c *containerCluster) ip(id string) string {
	var n int
	fmt.Sscanf(id, "n%d", &n)
	return fmt.Sprintf("%s.%d", c.subnet, 10+n)
}

func (c *containerCluster) Addr(id string) string { return c.ip(id) + ":7100" }

func (c *containerCluster) Addrs() []string {
	var out []string
	for _, id := range c.ids {
		out = append(out, c.Addr(id))
	}
	return out
}

func (c *containerCluster) container(id string) string { return c.name + "-" + id }

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// startContainers builds the node image and starts n founding nodes.
func startContainers(t *testing.T, n, partitions int, extra ...string) *containerCluster {
	t.Helper()
	if _, err := run("docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("needs a docker engine: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: faults are injected with nsenter, iptables, tc and mount")
	}
	for _, tool := range []string{"nsenter", "iptables", "tc", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	build := t.TempDir()
	gb := exec.Command("go", "build", "-o", filepath.Join(build, "zerogrid"), "../cmd/zerogrid")
	gb.Env = append(os.Environ(), "CGO_ENABLED=0") // FROM scratch: no libc
	if out, err := gb.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	df, err := os.ReadFile("bench/pizero/Dockerfile") // the node image: FROM scratch, the binary alone
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(build, "Dockerfile"), df, 0o644); err != nil {
		t.Fatal(err)
	}
	image := fmt.Sprintf("zerogrid-faults:%d", os.Getpid())
	if _, err := run("docker", "build", "-q", "-t", image, build); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = run("docker", "rmi", "-f", image) })

	c := &containerCluster{t: t, name: fmt.Sprintf("zgf%d", os.Getpid()), dirs: map[string]string{}, stopped: map[string]bool{}}
	for i := 0; ; i++ {
		c.subnet = fmt.Sprintf("172.31.%d", 20+(os.Getpid()+i)%200)
		_, err := run("docker", "network", "create", "--subnet", c.subnet+".0/24", c.name)
		if err == nil {
			break
		}
		if i == 10 {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = run("docker", "network", "rm", c.name) })
	var peers []string
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		c.ids = append(c.ids, id)
		peers = append(peers, id+"="+c.Addr(id))
	}
	for _, id := range c.ids {
		dir := filepath.Join(t.TempDir(), id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := run("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", dir); err != nil {
			t.Skipf("needs a size-limited file system per node: %v", err)
		}
		c.dirs[id] = dir
		t.Cleanup(func() { _, _ = run("umount", "-l", dir) })
	}
	t.Cleanup(func() {
		for _, id := range c.ids {
			if t.Failed() {
				out, err := exec.Command("docker", "logs", "--tail", "60", c.container(id)).CombinedOutput()
				if err != nil {
					out = append(out, []byte(err.Error())...)
				}
				t.Logf("---- last log lines of %s ----\n%s", id, out)
			}
			_, _ = run("docker", "rm", "-f", c.container(id))
		}
	})
	for _, id := range c.ids {
		tlsDir := filepath.Join(t.TempDir(), id+"-tls")
		if err := gridtls.IssueNode(caDir, tlsDir, id, []string{c.ip(id)}); err != nil {
			t.Fatal(err)
		}
		args := []string{"run", "-d", "--name", c.container(id), "--network", c.name, "--ip", c.ip(id),
			"-v", c.dirs[id] + ":/data", "-v", tlsDir + ":/tls:ro", image,
			"node", "--id", id, "--listen", c.Addr(id), "--data-dir", "/data", "--tls-dir", "/tls", "--peers", strings.Join(peers, ","),
			"--partitions", fmt.Sprint(partitions), "--replicas", "3", "--profile", "test"}
		if _, err := run("docker", append(args, extra...)...); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// nsenter runs a command in node id's network namespace.
func (c *containerCluster) nsenter(id string, args ...string) error {
	pid, err := run("docker", "inspect", "-f", "{{.State.Pid}}", c.container(id))
	if err != nil {
		return err
	}
	_, err = run("nsenter", append([]string{"-t", pid, "-n"}, args...)...)
	return err
}

func (c *containerCluster) mark(id string, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped[id] = down
}

// fault is one step of a nemesis schedule: start it, hold, then heal.
type fault struct {
	name  string
	start func() error
	heal  func() error
}

// faults lists the kinds of fault, aimed at node ids picked by pick.
func (c *containerCluster) faults(cl *client.Client, pick func() string) []func() fault {
	others := func(id string) []string {
		var out []string
		for _, o := range c.ids {
			if o != id {
				out = append(out, o)
			}
		}
		return out
	}
	// cut drops traffic between every node of a and every node of b.
	cut := func(a, b []string) error {
		var errs []error
		for _, x := range a {
			for _, y := range b {
				errs = append(errs,
					c.nsenter(x, "iptables", "-I", "INPUT", "-s", c.ip(y), "-j", "DROP"),
					c.nsenter(x, "iptables", "-I", "OUTPUT", "-d", c.ip(y), "-j", "DROP"),
					c.nsenter(y, "iptables", "-I", "INPUT", "-s", c.ip(x), "-j", "DROP"),
					c.nsenter(y, "iptables", "-I", "OUTPUT", "-d", c.ip(x), "-j", "DROP"))
			}
		}
		return errors.Join(errs...)
	}
	healNet := func() error {
		var errs []error
		for _, id := range c.ids {
			if c.Running(id) {
				errs = append(errs, c.nsenter(id, "iptables", "-F", "INPUT"), c.nsenter(id, "iptables", "-F", "OUTPUT"))
			}
		}
		return errors.Join(errs...)
	}
	return []func() fault{
		func() fault {
			id := pick()
			return fault{"kill -9 " + id, func() error {
				c.mark(id, true)
				_, err := run("docker", "kill", "-s", "KILL", c.container(id))
				return err
			}, func() error {
				_, err := run("docker", "start", c.container(id))
				c.mark(id, false)
				return err
			}}
		},
		func() fault {
			id := pick()
			return fault{"SIGSTOP " + id, func() error {
				c.mark(id, true)
				_, err := run("docker", "kill", "-s", "STOP", c.container(id))
				return err
			}, func() error {
				_, err := run("docker", "kill", "-s", "CONT", c.container(id))
				c.mark(id, false)
				return err
			}}
		},
		func() fault {
			id := pick()
			return fault{"isolate " + id, func() error { return cut([]string{id}, others(id)) }, healNet}
		},
		func() fault {
			a := []string{c.ids[0], c.ids[1]}
			return fault{"split " + strings.Join(a, ",") + " | rest", func() error { return cut(a, c.ids[2:]) }, healNet}
		},
		func() fault {
			return fault{"10% packet loss on every node", func() error {
				var errs []error
				for _, id := range c.ids {
					errs = append(errs, c.nsenter(id, "iptables", "-I", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"))
				}
				return errors.Join(errs...)
			}, healNet}
		},
		func() fault {
			id := pick()
			return fault{"256 kbit/s link (queueing delay) on " + id, func() error {
				return c.nsenter(id, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst", "16kbit", "latency", "400ms")
			}, func() error { return c.nsenter(id, "tc", "qdisc", "del", "dev", "eth0", "root") }}
		},
		func() fault {
			id := pick()
			ballast := filepath.Join(c.dirs[id], "ballast")
			return fault{"disk full on " + id, func() error {
				var st syscall.Statfs_t
				if err := syscall.Statfs(c.dirs[id], &st); err != nil {
					return err
				}
				f, err := os.Create(ballast)
				if err != nil {
					return err
				}
				defer f.Close()
				return syscall.Fallocate(int(f.Fd()), 0, 0, int64(st.Bavail)*int64(st.Bsize)-32<<20)
			}, func() error { return os.Remove(ballast) }}
		},
		func() fault {
			id := c.ids[len(c.ids)-1]
			return fault{"isolate " + id + " and drain it meanwhile", func() error {
				if err := cut([]string{id}, others(id)); err != nil {
					return err
				}
				time.Sleep(2 * time.Second)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				return cl.DrainNode(ctx, id)
			}, func() error {
				if err := healNet(); err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				return cl.UndrainNode(ctx, id)
			}}
		},
	}
}

// TestFaultsInContainers runs five nodes in containers and, while
// porcupine-recorded clients put, get, compare-and-swap and delete, goes
// through a schedule of faults: kill -9, SIGSTOP past the election timeout,
// an isolated node, a 2|3 split, packet loss, a starved link, a full disk,
// and a drain during a partition. Then: the history must be linearizable,
// every acknowledged write present, and the replicas equal. -long repeats
// the schedule for ten minutes with random targets.
func TestFaultsInContainers(t *testing.T) {
	const parts = 8
	c := startContainers(t, 5, parts, "--dead-after", "20s", "--min-free-disk", "64MiB")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cl, err := dialCluster(ctx, c.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	eventually(t, 60*time.Second, func() error {
		err := cl.CreateMap(ctx, "lin")
		if errors.Is(err, client.ErrMapExists) {
			return nil
		}
		return err
	})
	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	lin := cl.Map("lin")
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runWorker(ctx, w, lin, []string{"a", "b", "c", "d", "e", "f"}, h, stop)
		}()
	}
	acks := &ackWriter{m: lin}
	wg.Add(1)
	go func() {
		defer wg.Done()
		acks.run(ctx, stop)
	}()

	seed := uint64(time.Now().UnixNano())
	t.Logf("fault targets seeded with %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	pick := func() string { return c.ids[rng.IntN(len(c.ids))] }
	kinds := c.faults(cl, pick)
	rounds := 1
	if *long {
		rounds = 12
	}
	var done []string
	for r := 0; r < rounds; r++ {
		for _, kind := range kinds {
			f := kind()
			time.Sleep(2 * time.Second)
			if err := f.start(); err != nil {
				t.Fatalf("start fault %q: %v", f.name, err)
			}
			time.Sleep(4 * time.Second)
			if err := f.heal(); err != nil {
				t.Fatalf("heal fault %q: %v", f.name, err)
			}
			done = append(done, f.name)
			t.Logf("fault done: %s", f.name)
		}
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	checkLinearizable(t, h, fmt.Sprintf("%d faults in containers", len(done)))
	acks.check(ctx, t)
	eventually(t, 3*time.Minute, func() error {
		tbl, err := cl.Table(ctx)
		if err != nil {
			return err
		}
		for _, p := range tbl.Partitions {
			if p.Moving() || len(p.Replicas) != 3 {
				return fmt.Errorf("table epoch %d: partition %d: replicas %v, moving %v", tbl.Epoch, p.ID, p.Replicas, p.Moving())
			}
		}
		return replicasEqual(ctx, c, parts, []string{"lin"})
	})
	t.Logf("replicas of all %d partitions equal after: %s", parts, strings.Join(done, "; "))
}

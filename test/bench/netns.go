package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// netnsEnv marks the copy of the driver that runs inside its own network
// namespace.
const netnsEnv = "ZEROGRID_BENCH_NETNS"

func inOwnNetns() bool { return os.Getenv(netnsEnv) == "1" }

// runInNetns runs this program again with args in a new network namespace
// (which needs root), and waits for it. The namespace has its own loopback
// interface: its byte counters count only the benchmark's traffic, shaping
// it slows nobody else, and it disappears, qdisc and all, when the last
// process in it exits. A Ctrl-C reaches the copy directly (same process
// group); when this process's ctx ends otherwise, the copy gets SIGTERM.
func runInNetns(ctx context.Context, args, env []string, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(append(os.Environ(), netnsEnv+"=1"), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 2 * time.Minute
	if err := cmd.Run(); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("start the driver in a new network namespace (needs root; or pass -netns=false): %w", err)
		}
		return fmt.Errorf("the driver in its network namespace: %w", err)
	}
	return nil
}

// loUp brings up the loopback interface of a fresh namespace.
func loUp(ctx context.Context) error {
	if out, err := exec.CommandContext(ctx, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// loBytes is the bytes sent through the loopback interface of this
// process's network namespace (/proc/self/net/dev; on lo every packet is
// sent once and received once, so this counts each byte once), with
// TCP/IP and link headers.
func loBytes() (int64, error) {
	raw, err := os.ReadFile("/proc/self/net/dev")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "lo" {
			continue
		}
		f := strings.Fields(rest) // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes ...
		if len(f) < 9 {
			return 0, fmt.Errorf("/proc/self/net/dev: odd lo line %q", line)
		}
		return strconv.ParseInt(f[8], 10, 64)
	}
	return 0, errors.New("/proc/self/net/dev: no lo line")
}

// shaping is how the loopback link is shaped.
type shaping struct {
	// Qdisc is the tc qdisc in place.
	Qdisc string
	// ClientDelay is a one-way delay the driver has to add itself on the
	// client's connections, because the kernel has no netem.
	ClientDelay time.Duration
}

// shapeLo puts a rate limit and a one-way delay on lo: netem does both;
// where the kernel lacks netem (CONFIG_NET_SCH_NETEM unset), tbf limits
// the rate and the delay is left to the caller (ClientDelay). Unless the
// namespace is the driver's own, an existing root qdisc is an error: it is
// somebody else's. The returned undo removes the qdisc; call it even when
// ctx has ended (it does not use ctx).
func shapeLo(ctx context.Context, rate string, delay time.Duration, ownNetns bool) (shaping, func() error, error) {
	if !ownNetns {
		out, err := exec.CommandContext(ctx, "tc", "qdisc", "show", "dev", "lo").Output()
		if err != nil {
			return shaping{}, nil, fmt.Errorf("tc qdisc show dev lo: %w", err)
		}
		if !strings.HasPrefix(strings.TrimSpace(string(out)), "qdisc noqueue") {
			return shaping{}, nil, fmt.Errorf("lo already has a qdisc (%s); not touching it", bytes.TrimSpace(out))
		}
	}
	undo := func() error {
		out, err := exec.Command("tc", "qdisc", "del", "dev", "lo", "root").CombinedOutput()
		if err != nil {
			return fmt.Errorf("tc qdisc del dev lo root: %w: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	us := strconv.FormatInt(delay.Microseconds(), 10) + "us"
	netem := []string{"qdisc", "add", "dev", "lo", "root", "netem", "delay", us, "rate", rate, "limit", "100000"}
	out, err := exec.CommandContext(ctx, "tc", netem...).CombinedOutput()
	if err == nil {
		return shaping{Qdisc: "netem delay " + us + " rate " + rate}, undo, nil
	}
	if !bytes.Contains(out, []byte("qdisc kind is unknown")) {
		return shaping{}, nil, fmt.Errorf("tc %s: %w: %s", strings.Join(netem, " "), err, bytes.TrimSpace(out))
	}
	// tbf drops a packet larger than its burst, and TCP on lo sends up to
	// 64 KiB at once: the burst must hold several of those. The queue
	// (latency) is deep enough that the benchmark's traffic is not dropped.
	tbf := []string{"qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "200ms"}
	if out, err := exec.CommandContext(ctx, "tc", tbf...).CombinedOutput(); err != nil {
		return shaping{}, nil, fmt.Errorf("tc %s: %w: %s", strings.Join(tbf, " "), err, bytes.TrimSpace(out))
	}
	return shaping{Qdisc: strings.Join(tbf[5:], " "), ClientDelay: delay}, undo, nil
}

// qdiscDrops is the packets lo's root qdisc has dropped (0 without one).
func qdiscDrops(ctx context.Context) (int64, error) {
	out, err := exec.CommandContext(ctx, "tc", "-s", "qdisc", "show", "dev", "lo").Output()
	if err != nil {
		return 0, fmt.Errorf("tc -s qdisc show dev lo: %w", err)
	}
	// " Sent 1234 bytes 56 pkt (dropped 7, overlimits 8 requeues 0)"
	_, rest, ok := strings.Cut(string(out), "(dropped ")
	if !ok {
		return 0, nil
	}
	n, _, _ := strings.Cut(rest, ",")
	return strconv.ParseInt(strings.TrimSpace(n), 10, 64)
}

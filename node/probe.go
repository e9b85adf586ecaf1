package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/grid"
)

// Probe sizes. The whole probe takes about cpuProbeTime plus fsyncProbeWrites
// fsyncs: ≈ 60 ms on a server, a few hundred ms on an SD card.
const (
	cpuProbeTime     = 50 * time.Millisecond
	cpuProbeChunk    = 1 << 14 // iterations between clock reads
	fsyncProbeWrites = 20
	fsyncProbeBlock  = 4 << 10
)

// Probe measures what this machine can do, for the node to announce when it
// joins: architecture, cores, a CPU score, memory, free disk and fsync latency
// in dataDir, plus the given labels and software version.
//
// Everything but the fsync probe is best effort: a figure that cannot be read
// (no /proc/meminfo off Linux, say) is left at 0, which placement reads as
// "unknown". The fsync probe writes and syncs a small temporary file in
// dataDir and removes it; if that fails the node cannot store data there, and
// Probe returns the error.
func Probe(ctx context.Context, dataDir string, labels map[string]string, version string) (grid.Capabilities, error) {
	caps := grid.Capabilities{
		Arch:    runtime.GOARCH,
		GOARM:   goarm(),
		OS:      runtime.GOOS,
		Cores:   runtime.NumCPU(),
		Version: version,
	}
	if len(labels) > 0 {
		caps.Labels = make(map[string]string, len(labels))
		for k, v := range labels {
			caps.Labels[k] = v
		}
	}
	var err error
	if caps.FsyncP50, caps.FsyncP99, err = probeFsync(ctx, dataDir); err != nil {
		return grid.Capabilities{}, err
	}
	if caps.CPUScore, err = cpuScore(ctx, cpuProbeTime); err != nil {
		return grid.Capabilities{}, err
	}
	caps.RAMTotal, caps.RAMFree = memInfo("/proc/meminfo")
	caps.DiskFree = diskFree(dataDir)
	return caps, nil
}

// goarm reports the ARM variant the binary was built for ("6", "7"), which
// is what decides the instructions it may use; empty on other architectures.
func goarm() string {
	if runtime.GOARCH != "arm" {
		return ""
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "GOARM" {
			return s.Value
		}
	}
	return ""
}

// cpuScore runs a fixed integer workload (a xorshift generator feeding a
// multiply-accumulate) on one core for about d and returns iterations per
// millisecond. The work per iteration is the same everywhere, so scores
// compare machines; 64-bit arithmetic makes 32-bit ARM pay its real cost.
func cpuScore(ctx context.Context, d time.Duration) (int64, error) {
	start := time.Now()
	var iters int64
	x, acc := uint64(0x9e3779b97f4a7c15), uint64(1)
	for {
		for i := 0; i < cpuProbeChunk; i++ {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			acc = acc*0x100000001b3 + x
		}
		iters += cpuProbeChunk
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if el := time.Since(start); el >= d {
			if acc == 0 { // keeps the loop from being optimised away; practically never true
				iters++
			}
			return max(1, iters*int64(time.Millisecond)/int64(el)), nil
		}
	}
}

// probeFsync writes and syncs fsyncProbeWrites blocks to a temporary file in
// dir, timing each write+fsync, and returns the median and the 99th
// percentile (nearest rank). The file is removed.
func probeFsync(ctx context.Context, dir string) (p50, p99 time.Duration, err error) {
	f, err := os.CreateTemp(dir, ".zerogrid-fsync-probe-*")
	if err != nil {
		return 0, 0, fmt.Errorf("node: fsync probe in %s: %w", dir, err)
	}
	defer func() {
		cerr := f.Close()
		rerr := os.Remove(f.Name())
		if err == nil {
			err = errors.Join(cerr, rerr)
			if err != nil {
				err = fmt.Errorf("node: fsync probe in %s: %w", dir, err)
			}
		}
	}()
	block := make([]byte, fsyncProbeBlock)
	for i := range block {
		block[i] = byte(i * 31)
	}
	lat := make([]time.Duration, 0, fsyncProbeWrites)
	for i := 0; i < fsyncProbeWrites; i++ {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		start := time.Now()
		if _, err := f.Write(block); err != nil {
			return 0, 0, fmt.Errorf("node: fsync probe write in %s: %w", dir, err)
		}
		if err := f.Sync(); err != nil {
			return 0, 0, fmt.Errorf("node: fsync probe sync in %s: %w", dir, err)
		}
		// A latency of 0 would read as "not measured": clamp to 1ns.
		lat = append(lat, max(time.Since(start), time.Nanosecond))
	}
	slices.Sort(lat)
	return percentile(lat, 50), percentile(lat, 99), nil
}

// percentile returns the nearest-rank q-th percentile of sorted samples.
func percentile(sorted []time.Duration, q int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (q*len(sorted) + 99) / 100 // ⌈q/100 × n⌉
	return sorted[max(rank, 1)-1]
}

// memInfo reads total and available memory from a Linux meminfo file; zeros
// where it cannot. Available (not free) memory is what new work can use
// without swapping, counting reclaimable page cache.
func memInfo(path string) (total, avail uint64) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	var free uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) > 1 && fields[1] == "kB" {
			v <<= 10
		}
		switch key {
		case "MemTotal":
			total = v
		case "MemAvailable":
			avail = v
		case "MemFree":
			free = v
		}
	}
	if avail == 0 { // kernels before 3.14 have no MemAvailable
		avail = free
	}
	return total, avail
}

// diskFree is the space in dir's file system available to this (unprivileged)
// process; 0 if it cannot be read.
func diskFree(dir string) uint64 {
	free, _, _ := diskSpace(dir)
	return free
}

// diskSpace is the space in dir's file system available to this
// (unprivileged) process, and the file system's size.
func diskSpace(dir string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	// Field types differ between platforms.
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize), nil
}

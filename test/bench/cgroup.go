package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memCgroups holds each zerogrid node process in a cgroup (v1 memory
// controller) of its own with a memory limit, as a container would: page
// cache and mapped files count against it, and the kernel reclaims them
// before it kills anything.
type memCgroups struct {
	dirs []string
}

const cgroupMemRoot = "/sys/fs/cgroup/memory"

// limitMemory moves each of pids into a new cgroup limited to limit bytes.
func limitMemory(pids []int, limit int64) (*memCgroups, error) {
	m := &memCgroups{}
	for _, pid := range pids {
		dir := filepath.Join(cgroupMemRoot, fmt.Sprintf("zgbench-%d-%d", os.Getpid(), pid))
		if err := os.Mkdir(dir, 0o755); err != nil {
			m.remove()
			return nil, fmt.Errorf("memory cgroup (needs root and the v1 memory controller at %s): %w", cgroupMemRoot, err)
		}
		m.dirs = append(m.dirs, dir)
		for name, val := range map[string]string{"memory.limit_in_bytes": strconv.FormatInt(limit, 10), "cgroup.procs": strconv.Itoa(pid)} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(val), 0o644); err != nil {
				m.remove()
				return nil, fmt.Errorf("memory cgroup %s: %s: %w", dir, name, err)
			}
		}
	}
	return m, nil
}

// describe reports each cgroup's peak charge, how often it hit its limit,
// and its OOM kills.
func (m *memCgroups) describe() string {
	var b strings.Builder
	for _, dir := range m.dirs {
		read := func(name string) string {
			raw, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return "?"
			}
			return strings.TrimSpace(string(raw))
		}
		peak, _ := strconv.ParseInt(read("memory.max_usage_in_bytes"), 10, 64)
		oom := strings.ReplaceAll(read("memory.oom_control"), "\n", ", ")
		fmt.Fprintf(&b, "%s: peak charge %.0f MiB, limit hit %s times, %s; ", filepath.Base(dir), float64(peak)/(1<<20), read("memory.failcnt"), oom)
	}
	return b.String()
}

// remove deletes the cgroups (their processes must have exited).
func (m *memCgroups) remove() {
	for _, dir := range m.dirs {
		_ = os.Remove(dir)
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// pprofArgs are the node flags -cpuprofile needs.
func pprofArgs(dir string) []string {
	if dir == "" {
		return nil
	}
	return []string{"--ops-pprof"}
}

// profiled is a store whose servers serve Go's profiler.
type profiled interface {
	// ProfileURLs maps a server's name to its CPU profile URL for secs.
	ProfileURLs(secs int) map[string]string
}

// startCellProfile fetches every server's CPU profile of the cell's
// measured window (after the warm-up) into cfg.cpuProfile as
// NAME-node.pprof; the returned func waits for them. It does nothing
// without -cpuprofile or for a store that cannot be profiled.
func startCellProfile(ctx context.Context, cfg config, s store, name string, logf func(string, ...any)) (wait func()) {
	p, ok := s.(profiled)
	if cfg.cpuProfile == "" || !ok {
		return func() {}
	}
	if err := os.MkdirAll(cfg.cpuProfile, 0o755); err != nil {
		logf("cpuprofile: %v", err)
		return func() {}
	}
	var wg sync.WaitGroup
	for node, url := range p.ProfileURLs(int(cfg.duration.Seconds())) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(cfg.warmup):
			case <-ctx.Done():
				return
			}
			path := filepath.Join(cfg.cpuProfile, fmt.Sprintf("%s-%s.pprof", name, node))
			if err := fetchTo(ctx, url, path); err != nil {
				logf("cpuprofile %s: %v", path, err)
			}
		}()
	}
	return wg.Wait
}

func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

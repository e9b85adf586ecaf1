package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/zerogrid/zerogrid/node"
)

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := node.DefaultConfig()
	fs := newFlags("node", "node --id ID --listen ADDR --data-dir DIR --peers ID=ADDR,... [flags]", stderr)
	fs.StringVar(&cfg.ID, "id", "", "this node's id (unique in the cluster)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7101", "gRPC address to listen on and advertise")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the engine and Raft logs")
	peers := fs.String("peers", "", "initial cluster: id=host:port,... (include this node)")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partition count (fixed when the cluster is created)")
	fs.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "copies of each partition")
	fs.StringVar(&cfg.Profile, "profile", cfg.Profile, "timing and memory profile: default, small (Pi Zero) or test")
	fs.StringVar(&cfg.Engine, "engine", "", "storage engine: badger or bbolt (default: bbolt on 32-bit ARM, badger elsewhere)")
	fs.IntVar(&cfg.Limits.MaxValueBytes, "max-value-bytes", cfg.Limits.MaxValueBytes, "largest value accepted")
	fs.IntVar(&cfg.Limits.MaxKeyBytes, "max-key-bytes", cfg.Limits.MaxKeyBytes, "largest key accepted")
	fs.DurationVar(&cfg.TaskDelay, "task-delay", 0, "test knob: delay every compute task on this node (simulates a slow node)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	memLimit := fs.Int("memory-limit-mb", -1, "soft Go memory limit in MiB (default: 100 with --profile small, none otherwise; GOMEMLIMIT wins)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: node takes no arguments, got %q", errUsage, pos)
	}
	if cfg.Peers, err = node.ParsePeers(*peers); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	// The limit is process-wide, so the binary sets it, not the node package
	// (several nodes may share a process). It makes the GC work harder
	// before a bulk load pushes a 512 MB machine into swap.
	if *memLimit < 0 && cfg.Profile == "small" {
		*memLimit = 100
	}
	if *memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(*memLimit) << 20)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	n, err := node.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "node %s serving on %s\n", cfg.ID, n.Addr())
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-n.Fatal():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

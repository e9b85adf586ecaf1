package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// progressEvery limits how often a progress line is redrawn.
const progressEvery = 100 * time.Millisecond

// throttle calls draw at most once per progressEvery, unless forced.
type throttle struct{ last time.Time }

func (t *throttle) ok(force bool) bool {
	if !force && time.Since(t.last) < progressEvery {
		return false
	}
	t.last = time.Now()
	return true
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var out string
	var quiet bool
	return clientCommand(ctx, args, stderr, "backup", "backup --out FILE [--quiet]  (consistent, checksummed backup of every map)",
		exactly(0),
		func(fs *flag.FlagSet) {
			fs.StringVar(&out, "out", "", "file to write the backup to (required)")
			fs.BoolVar(&quiet, "quiet", false, "no progress bar")
			longTimeout(fs, 24*time.Hour, "give up after this long")
		},
		func(ctx context.Context, cl *client.Client, _ []string) error {
			if out == "" {
				return fmt.Errorf("%w: --out is required", errUsage)
			}
			// Write next to the target and rename at the end, so a failed
			// backup never leaves a file that looks like a backup.
			f, err := os.CreateTemp(filepath.Dir(out), filepath.Base(out)+".partial-*")
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			defer os.Remove(f.Name())
			defer f.Close()
			var th throttle
			man, err := cl.Backup(ctx, f, func(p client.BackupProgress) {
				if !quiet && th.ok(p.PartitionsDone == p.Partitions) {
					fmt.Fprintf(stderr, "\r%s %d/%d partitions  %d entries  %s ",
						bar(p.PartitionsDone, p.Partitions, 30), p.PartitionsDone, p.Partitions, p.Entries, humanBytes(uint64(p.Bytes)))
				}
			})
			if !quiet {
				fmt.Fprintln(stderr)
			}
			if err != nil {
				return err
			}
			if err := f.Sync(); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			if err := os.Rename(f.Name(), out); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			fmt.Fprintf(stdout, "backup %s: %d maps, %d partitions, %d entries, %s, sha256 %s\n",
				out, len(man.Maps), len(man.Parts), man.Entries, humanBytes(uint64(man.Bytes)), man.SHA256)
			return nil
		})
}

func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var quiet bool
	return clientCommand(ctx, args, stderr, "restore", "restore FILE [--quiet]  (into a new cluster; the file is verified first)",
		exactly(1),
		func(fs *flag.FlagSet) {
			fs.BoolVar(&quiet, "quiet", false, "no progress bar")
			longTimeout(fs, 24*time.Hour, "give up after this long")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			f, err := os.Open(pos[0])
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			defer f.Close()
			var th throttle
			phase := ""
			man, err := cl.Restore(ctx, f, func(p client.RestoreProgress) {
				if quiet {
					return
				}
				if p.Phase != phase {
					if phase != "" {
						fmt.Fprintln(stderr)
					}
					phase = p.Phase
				} else if !th.ok(false) {
					return
				}
				switch p.Phase {
				case "verify":
					fmt.Fprintf(stderr, "\rverify %s %s of %s ", bar(int(p.Bytes>>10), int(p.TotalBytes>>10), 30), humanBytes(uint64(p.Bytes)), humanBytes(uint64(p.TotalBytes)))
				default:
					fmt.Fprintf(stderr, "\rwrite  %s %d/%d entries ", bar(int(p.Entries), int(p.TotalEntries), 30), p.Entries, p.TotalEntries)
				}
			})
			if !quiet && phase != "" {
				fmt.Fprintln(stderr)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "restored %s: %d maps, %d entries (backup of %d partitions taken %s)\n",
				pos[0], len(man.Maps), man.Entries, len(man.Parts), man.Created.Format(time.RFC3339))
			return nil
		})
}

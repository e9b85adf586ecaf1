package main

import (
	"context"
	"encoding/json"

	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// runWatch prints every change of a map (or of the keys under a prefix),
// one line per key change: "PARTITION:VERSION TYPE KEY VALUE", tab-separated,
// until interrupted (or --timeout). On the way out it prints the cursor to
// resume from on stderr.
func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var from uint64
	var cursor string
	var asJSON bool
	fs := newFlags("watch", "watch MAP [PREFIX] [--from V | --cursor P:V,...] [--json]", stderr)
	cf.register(fs)
	longTimeout(fs, 0, "stop after this long (0: run until interrupted)")
	fs.Uint64Var(&from, "from", 0, "first version to print in every partition (0: from now)")
	fs.StringVar(&cursor, "cursor", "", "resume from a cursor printed by an earlier watch: partition:version,...")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 || (from != 0 && cursor != "") {
		fs.Usage()
		return errUsage
	}
	cur, err := parseCursor(cursor)
	if err != nil {
		return err
	}
	if cf.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cf.timeout)
		defer cancel()
	}
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	cl, err := cf.dial(dctx)
	dcancel()
	if err != nil {
		return err
	}
	defer cl.Close()
	var prefix []byte
	if len(pos) == 2 {
		prefix = []byte(pos[1])
	}
	m := cl.Map(pos[0])
	var w *client.Watcher
	if cur != nil {
		w, err = m.WatchFrom(ctx, prefix, cur)
	} else {
		w, err = m.Watch(ctx, prefix, from)
	}
	if err != nil {
		return err
	}
	defer func() {
		w.Close()
		fmt.Fprintf(stderr, "resume with: --cursor %s\n", formatCursor(w.Cursor()))
	}()
	enc := json.NewEncoder(stdout)
	for {
		ch, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted or --timeout: a normal end
			}
			return err
		}
		for _, e := range ch.Events {
			if asJSON {
				obj := map[string]any{"partition": ch.Partition, "version": ch.Version, "type": e.Type.String(), "key": string(e.Key)}
				if e.Type == client.EventPut {
					obj["value"] = string(e.Value)
				}
				if !e.Expiry.IsZero() {
					obj["expiry"] = e.Expiry.UTC().Format(time.RFC3339Nano)
				}
				if err := enc.Encode(obj); err != nil {
					return err
				}
				continue
			}
			line := fmt.Sprintf("%d:%d\t%s\t%s", ch.Partition, ch.Version, e.Type, e.Key)
			if e.Type == client.EventPut {
				line += "\t" + strings.ReplaceAll(string(e.Value), "\n", `\n`)
			}
			if _, err := fmt.Fprintln(stdout, line); err != nil {
				return err
			}
		}
	}
}

func parseCursor(s string) (client.Cursor, error) {
	if s == "" {
		return nil, nil
	}
	cur := client.Cursor{}
	for _, part := range strings.Split(s, ",") {
		p, v, ok := strings.Cut(strings.TrimSpace(part), ":")
		pn, perr := strconv.Atoi(p)
		vn, verr := strconv.ParseUint(v, 10, 64)
		if !ok || perr != nil || verr != nil || pn < 0 {
			return nil, fmt.Errorf("%w: cursor entry %q must look like partition:version", errUsage, part)
		}
		cur[pn] = vn
	}
	return cur, nil
}

func formatCursor(c client.Cursor) string {
	parts := make([]int, 0, len(c))
	for p := range c {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%d", p, c[p])
	}
	return b.String()
}

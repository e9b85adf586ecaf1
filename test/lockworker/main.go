// Command lockworker is a client process for the lock tests in test/: it
// takes a lock again and again and, while it believes it holds it, writes
// to a guarded resource with its fencing token. It deliberately does not
// look at Lost() before writing, like a client that was paused between
// checking its lock and writing: the resource's fence must stop it.
//
// It reports on stdout, one event a line:
//
//	ACQUIRED id token
//	WROTE id token i version
//	REFUSED id token i          (stale token: the resource refused the write)
//	UNKNOWN id token i error    (the write may or may not have been applied)
//	RELEASED id token | UNLOCKERR id token error | LOCKERR id error
//
// The resource's keys are log:{res}:ID:TOKEN:I (one hash tag, so one
// partition keeps them all and orders them by version); each value is the
// token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

func main() {
	var (
		addrs    = flag.String("addr", "", "cluster addresses, comma-separated")
		id       = flag.String("id", "w", "worker id")
		name     = flag.String("lock", "res", "lock (and fence) name")
		mapName  = flag.String("map", "guard", "map of the guarded resource")
		ttl      = flag.Duration("ttl", time.Second, "lease")
		writes   = flag.Int("writes", 6, "writes per acquisition")
		interval = flag.Duration("interval", 100*time.Millisecond, "pause between writes")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, strings.Split(*addrs, ","), *id, *name, *mapName, *ttl, *writes, *interval); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "lockworker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addrs []string, id, name, mapName string, ttl time.Duration, writes int, interval time.Duration) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	// The tests' client certificate, as the CLI finds it.
	c, err := client.DialWith(dctx, addrs, client.WithTLSDir(os.Getenv("ZEROGRID_TLS_DIR")))
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	m := c.Map(mapName)
	for ctx.Err() == nil {
		l, err := c.Lock(ctx, name, client.WithLeaseTTL(ttl))
		if err != nil {
			fmt.Printf("LOCKERR %s %v\n", id, err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		tok := l.Token()
		fmt.Printf("ACQUIRED %s %d\n", id, tok)
		for i := 0; i < writes && ctx.Err() == nil; i++ {
			key := fmt.Sprintf("log:{%s}:%s:%d:%d", name, id, tok, i)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ver, err := m.Put(wctx, []byte(key), []byte(fmt.Sprint(tok)), l.Fence())
			cancel()
			if errors.Is(err, client.ErrStaleToken) {
				fmt.Printf("REFUSED %s %d %d\n", id, tok, i)
				break
			}
			if err != nil {
				fmt.Printf("UNKNOWN %s %d %d %s\n", id, tok, i, strings.ReplaceAll(err.Error(), "\n", " "))
				continue
			}
			fmt.Printf("WROTE %s %d %d %d\n", id, tok, i, ver)
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
		}
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = l.Unlock(uctx)
		cancel()
		if err != nil {
			fmt.Printf("UNLOCKERR %s %d %s\n", id, tok, strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Printf("RELEASED %s %d\n", id, tok)
		}
	}
	return nil
}

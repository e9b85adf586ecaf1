package client_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// A job that must not run twice at once takes a lock, and guards each of
// its writes with the lock's fencing token: if it was paused past its lease
// and another run has written since, its write is refused instead of
// overwriting newer work. (Compiled, not run: it needs a real cluster.)
func ExampleClient_Lock() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7101")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(ctx, "nightly-report", client.WithLeaseTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Unlock(ctx)

	reports := c.Map("reports")
	_, err = reports.Put(ctx, []byte("{nightly}:summary"), []byte("..."), l.Fence())
	switch {
	case errors.Is(err, client.ErrStaleToken):
		log.Print("a later holder has written; stopping")
		return
	case err != nil:
		log.Fatal(err)
	}
	select {
	case <-l.Lost():
		log.Print("lease lost: stop before doing anything unfenced")
	default:
	}
}

package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sort"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// startExampleCluster starts an in-process fake three-node cluster with a
// "users" map and returns its addresses; a real program would pass the
// addresses of its nodes instead.
func startExampleCluster() (addrs []string, stop func()) {
	f, err := newFakeCluster(3, 8)
	if err != nil {
		log.Fatal(err)
	}
	f.maps["users"] = map[string]fakeEntry{}
	return f.Addrs(), f.Close
}

func ExampleDial() {
	addrs, stop := startExampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, addrs...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.CreateMap(ctx, "orders"); err != nil {
		log.Fatal(err)
	}
	maps, err := c.ListMaps(ctx)
	if err != nil {
		log.Fatal(err)
	}
	table, err := c.Table(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(maps)
	fmt.Println(len(table.Nodes), "nodes,", table.NumPartitions(), "partitions")
	// Output:
	// [orders users]
	// 3 nodes, 8 partitions
}

func ExampleMap_Put() {
	addrs, stop := startExampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addrs...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	users := c.Map("users")
	version, err := users.Put(ctx, []byte("ada"), []byte(`{"born":1815}`))
	if err != nil {
		log.Fatal(err)
	}
	value, got, err := users.Get(ctx, []byte("ada"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(value), got == version)

	// A stale read may be served by any replica, and says how far it had got.
	e, err := users.GetEntry(ctx, []byte("ada"), client.Stale())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(e.Value), e.AppliedIndex >= version)

	_, _, err = users.Get(ctx, []byte("grace"))
	fmt.Println(errors.Is(err, client.ErrNotFound))
	// Output:
	// {"born":1815} true
	// {"born":1815} true
	// true
}

func ExampleMap_CompareAndSwap() {
	addrs, stop := startExampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addrs...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	users := c.Map("users")

	// Expected version 0: create the key only if it does not exist.
	swapped, v1, err := users.CompareAndSwap(ctx, []byte("ada"), 0, []byte("v1"))
	fmt.Println("create:", swapped, err)
	swapped, _, err = users.CompareAndSwap(ctx, []byte("ada"), 0, []byte("other"))
	fmt.Println("create again:", swapped, err)

	// Update only if nobody wrote since we read version v1.
	swapped, v2, err := users.CompareAndSwap(ctx, []byte("ada"), v1, []byte("v2"))
	fmt.Println("update:", swapped, err)
	swapped, current, err := users.CompareAndSwap(ctx, []byte("ada"), v1, []byte("v3"))
	fmt.Println("update from an old version:", swapped, current == v2, err)

	deleted, _, err := users.CompareAndDelete(ctx, []byte("ada"), v2)
	fmt.Println("delete:", deleted, err)
	// Output:
	// create: true <nil>
	// create again: false <nil>
	// update: true <nil>
	// update from an old version: false true <nil>
	// delete: true <nil>
}

func ExampleMap_Scan() {
	addrs, stop := startExampleCluster()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addrs...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	users := c.Map("users")
	for _, name := range []string{"ada", "alan", "grace", "barbara"} {
		if _, err := users.Put(ctx, []byte("user:"+name), []byte(name)); err != nil {
			log.Fatal(err)
		}
	}

	// Keys come sorted within a partition only, so sort them to print.
	var names []string
	err = users.Scan(ctx, []byte("user:a"), func(e client.Entry) error {
		names = append(names, string(e.Value))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	sort.Strings(names)
	fmt.Println(names)
	// Output: [ada alan]
}

// A session token that expires on its own unless it is written again.
// (Not run: the in-process fake cluster has no clock-driven expiry.)
func ExampleWithTTL() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7101")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sessions := c.Map("sessions")
	if _, err := sessions.Put(ctx, []byte("tok-8f2a"), []byte("alice"), client.WithTTL(30*time.Minute)); err != nil {
		log.Fatal(err)
	}
	e, err := sessions.GetEntry(ctx, []byte("tok-8f2a"))
	if errors.Is(err, client.ErrNotFound) {
		fmt.Println("expired")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("valid until", e.Expiry)
}

// Follow a map's changes, and resume after a restart without missing or
// repeating one. (Not run: it watches a real cluster.)
func ExampleMap_Watch() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7101")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	users := c.Map("users")

	var saved client.Cursor // e.g. loaded from disk; nil: start from now
	var w *client.Watcher
	if saved != nil {
		w, err = users.WatchFrom(ctx, nil, saved)
	} else {
		w, err = users.Watch(ctx, nil, 0)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	for {
		ch, err := w.Next(ctx)
		var ce *client.CompactedError
		if errors.As(err, &ce) {
			// Too far behind: reload the state (Scan) and watch from now.
			log.Fatalf("partition %d kept history from version %d only", ce.Partition, ce.Oldest)
		}
		if err != nil {
			log.Fatal(err)
		}
		for _, e := range ch.Events {
			fmt.Printf("partition %d version %d: %s %s\n", ch.Partition, ch.Version, e.Type, e.Key)
		}
		saved = w.Cursor() // persist it to resume exactly here
	}
}

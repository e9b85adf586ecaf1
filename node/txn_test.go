package node_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

func TestTransactionsAllOrNothing(t *testing.T) {
	_, c := startWithMaps(t, []string{"bank"})
	m := c.Map("bank")
	ctx := context.Background()
	accounts := []string{"acct:{alice}:a", "acct:{alice}:b", "acct:{alice}:c", "acct:{alice}:d"}
	for _, a := range accounts {
		retry(t, 10*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, []byte(a), []byte("100")); return err })
	}

	// Concurrent transfers: read two balances, then move money only if
	// neither changed meanwhile. The total never changes.
	var wg sync.WaitGroup
	var mu sync.Mutex
	committed := 0
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				from, to := []byte(accounts[(w+i)%4]), []byte(accounts[(w+i+1)%4])
				fv, fver, err1 := m.Get(ctx, from)
				tv, tver, err2 := m.Get(ctx, to)
				if err1 != nil || err2 != nil {
					continue
				}
				f, _ := strconv.Atoi(string(fv))
				tt, _ := strconv.Atoi(string(tv))
				ok, _, err := m.Txn(ctx).
					If(client.VersionIs(from, fver), client.VersionIs(to, tver)).
					Then(client.OpPut(from, []byte(strconv.Itoa(f-7))), client.OpPut(to, []byte(strconv.Itoa(tt+7)))).
					Commit()
				if err == nil && ok {
					mu.Lock()
					committed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, a := range accounts {
		v, _, err := m.Get(ctx, []byte(a))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(string(v))
		total += n
	}
	if total != 400 {
		t.Fatalf("total after %d committed transfers = %d, want 400", committed, total)
	}
	if committed == 0 {
		t.Fatal("no transfer committed")
	}

	// A failed compare applies the Else branch and nothing of Then.
	ok, ver, err := m.Txn(ctx).If(client.ValueIs([]byte(accounts[0]), []byte("no such balance"))).
		Then(client.OpDelete([]byte(accounts[0]))).
		Else(client.OpPut([]byte("acct:{alice}:audit"), []byte("compare failed"))).Commit()
	if err != nil || ok {
		t.Fatalf("txn with a false compare: ok=%v err=%v", ok, err)
	}
	if _, _, err := m.Get(ctx, []byte(accounts[0])); err != nil {
		t.Fatalf("Then branch applied although the compare failed: %v", err)
	}
	v, av, err := m.Get(ctx, []byte("acct:{alice}:audit"))
	if err != nil || string(v) != "compare failed" || av != ver {
		t.Fatalf("Else branch: %q@%d (txn version %d), %v", v, av, ver, err)
	}
	// Missing / Exists.
	ok, _, err = m.Txn(ctx).If(client.Missing([]byte("acct:{alice}:new")), client.Exists([]byte(accounts[1]))).
		Then(client.OpPut([]byte("acct:{alice}:new"), []byte("0"))).Commit()
	if err != nil || !ok {
		t.Fatalf("Missing+Exists txn: ok=%v err=%v", ok, err)
	}

	// Keys of different partitions are refused, and nothing changes.
	var crossed []byte
	for i := 0; ; i++ {
		k := []byte(fmt.Sprintf("other-%d", i))
		if grid.PartitionOf("bank", k, 8) != grid.PartitionOf("bank", []byte(accounts[0]), 8) {
			crossed = k
			break
		}
	}
	_, _, err = m.Txn(ctx).Then(client.OpPut([]byte(accounts[0]), []byte("0")), client.OpPut(crossed, []byte("1"))).Commit()
	if !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("cross-partition txn: %v, want ErrBadRequest", err)
	}
	if _, _, err := m.Get(ctx, crossed); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("refused txn wrote: %v", err)
	}
	// Compares carry bounded values too.
	huge := make([]byte, grid.DefaultLimits().MaxValueBytes+1)
	_, _, err = m.Txn(ctx).If(client.ValueIs([]byte(accounts[0]), huge)).Then(client.OpPut([]byte(accounts[0]), []byte("0"))).Commit()
	if !errors.Is(err, grid.ErrValueTooLarge) {
		t.Fatalf("a compare with an oversized value: %v, want ErrValueTooLarge", err)
	}
}

package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

// txnBatch is records of one partition, written by one transaction.
type txnBatch struct {
	ops     []client.Op
	fields  []saleFields
	bytes   int
	records uint64
}

type saleFields struct {
	region, shop string
	amount       int64
}

// bulkResult is the outcome of a bulk load.
type bulkResult struct {
	Records  uint64 // committed
	Txns     int64
	Errors   int64 // failed attempts, each retried
	FirstErr string
	Elapsed  time.Duration
	TimedOut bool
	// Truth is the aggregate over exactly the committed records, from
	// their generated fields.
	Truth *aggregate
}

// bulkLoad writes records [0, n) into m: keys grouped by partition, each
// group committed as one transaction with no compares (a node takes a
// transaction only if all its keys are in one partition, and at most
// maxOps writes), inflight transactions at a time. A failed transaction is
// retried until it succeeds (the puts are idempotent), so an ambiguous
// outcome costs nothing. After limit, no new transaction starts.
func bulkLoad(ctx context.Context, m *client.Map, partitions int, gen recordGen, n uint64, maxOps, maxBytes, inflight int,
	limit time.Duration, progress func(done uint64)) (bulkResult, error) {
	start := time.Now()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		batches  = make(chan *txnBatch, 2*inflight)
		done     atomic.Uint64
		txns     atomic.Int64
		nErr     atomic.Int64
		errMu    sync.Mutex
		firstErr string
		fatal    error
		timedOut atomic.Bool
		wg       sync.WaitGroup
		truths   = make([]*aggregate, inflight)
	)
	fail := func(err error, stop bool) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == "" {
			firstErr = err.Error()
		}
		if stop && fatal == nil {
			fatal = err
			cancel()
		}
	}

	wg.Add(1)
	go func() { // the producer
		defer wg.Done()
		defer close(batches)
		open := make([]*txnBatch, partitions)
		send := func(b *txnBatch) bool {
			select {
			case batches <- b:
				return true
			case <-lctx.Done():
				return false
			}
		}
		stopAt := start.Add(limit)
		for i := uint64(0); i < n; i++ {
			if i%1024 == 0 && time.Now().After(stopAt) {
				timedOut.Store(true)
				return
			}
			k := gen.key(i)
			region, shop, amount, v := gen.record(i)
			p := grid.PartitionOf(m.Name(), k, partitions)
			b := open[p]
			if b == nil {
				b = &txnBatch{}
				open[p] = b
			}
			b.ops = append(b.ops, client.OpPut(k, v))
			b.fields = append(b.fields, saleFields{region, shop, amount})
			b.bytes += len(k) + len(v)
			b.records++
			if len(b.ops) >= maxOps || b.bytes >= maxBytes {
				open[p] = nil
				if !send(b) {
					return
				}
			}
		}
		for _, b := range open {
			if b != nil && !send(b) {
				return
			}
		}
	}()

	for w := range inflight {
		truths[w] = newAggregate()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				if err := commitBatch(lctx, m, b, func(err error) { nErr.Add(1); fail(err, false) }); err != nil {
					fail(err, true)
					return
				}
				for _, f := range b.fields {
					truths[w].addFields(f.region, f.shop, f.amount)
				}
				txns.Add(1)
				done.Add(b.records)
			}
		}()
	}

	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			t := time.NewTicker(10 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					progress(done.Load())
				}
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	pwg.Wait()

	res := bulkResult{Records: done.Load(), Txns: txns.Load(), Errors: nErr.Load(), FirstErr: firstErr,
		Elapsed: time.Since(start), TimedOut: timedOut.Load(), Truth: newAggregate()}
	for _, t := range truths {
		res.Truth.records += t.records
		for shop, s := range t.sums {
			res.Truth.sums[shop] += s
		}
	}
	if fatal != nil {
		return res, fatal
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// maxBatchAttempts bounds the retries of one transaction; each attempt is
// itself retried by the client.
const maxBatchAttempts = 20

// commitBatch commits one batch, retrying failures; failed is told each.
func commitBatch(ctx context.Context, m *client.Map, b *txnBatch, failed func(error)) error {
	var last error
	for attempt := range maxBatchAttempts {
		if attempt > 0 {
			if sleepUntil(ctx, time.Now().Add(time.Duration(attempt)*100*time.Millisecond)); ctx.Err() != nil {
				return ctx.Err()
			}
		}
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		ok, _, err := m.Txn(tctx).Then(b.ops...).Commit()
		cancel()
		if err == nil && !ok {
			err = fmt.Errorf("a transaction with no compares took its else branch")
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		last = err
		failed(err)
	}
	return fmt.Errorf("bulk load: a transaction of %d records failed %d times, last: %w", b.records, maxBatchAttempts, last)
}

package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// startRESPCluster starts a 3-node cluster whose nodes serve the Redis
// front door, with the map "redis" (and more) created.
func startRESPCluster(t *testing.T, insecure bool, maps ...string) *localcluster.Cluster {
	t.Helper()
	lc, _ := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: 8, Replicas: 3, RESP: true, Insecure: insecure}, append([]string{"redis"}, maps...)...)
	return lc
}

// respTLS is the TLS configuration of a Redis client of the tests'
// clusters: the cluster CA, and the client key pair in dir ("": none).
func respTLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	if dir == "" {
		m, err := gridtls.LoadCA(clientTLSDir)
		if err != nil {
			t.Fatal(err)
		}
		cfg := m.ClientConfig()
		cfg.GetClientCertificate = nil
		return cfg
	}
	m, err := gridtls.LoadClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m.ClientConfig()
}

func respClient(t *testing.T, addr string, tlsCfg *tls.Config, password string, proto int) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tlsCfg, Password: password, Protocol: proto,
		MaxRetries: -1, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// must returns a command's result, failing the test on its error.
func must[T any](t *testing.T, cmd interface{ Result() (T, error) }) T {
	t.Helper()
	v, err := cmd.Result()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// made returns v, failing the test on err: made[T](t)(f()).
func made[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func wantErr(t *testing.T, err error, contains string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), contains) {
		t.Fatalf("want an error containing %q, got %v", contains, err)
	}
}

// TestRESPCommands drives every command the front door serves with
// go-redis (RESP3 and RESP2) against a 3-node TLS cluster, across nodes.
func TestRESPCommands(t *testing.T) {
	lc := startRESPCluster(t, false, "second")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := respTLS(t, clientTLSDir)
	r1 := respClient(t, lc.RESPAddr("n1"), cfg, "", 3)
	r2 := respClient(t, lc.RESPAddr("n2"), cfg, "", 2)
	eventually(t, 30*time.Second, func() error { return r1.Set(ctx, "warm", "1", 0).Err() })

	if got := must(t, r1.Ping(ctx)); got != "PONG" {
		t.Fatalf("PING: %q", got)
	}
	// SET on one node, GET on another: reads are linearizable.
	for i := range 20 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		must(t, r1.Set(ctx, k, v, 0))
		if got := must(t, r2.Get(ctx, k)); got != v {
			t.Fatalf("GET %s on n2 after SET on n1: %q, want %q", k, got, v)
		}
	}
	if err := r1.Get(ctx, "missing").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET of a missing key: %v, want nil", err)
	}

	// NX and XX.
	if ok := must(t, r1.SetNX(ctx, "k0", "other", 0)); ok {
		t.Fatal("SET NX of an existing key succeeded")
	}
	if ok := must(t, r1.SetNX(ctx, "nx", "first", 0)); !ok {
		t.Fatal("SET NX of a new key failed")
	}
	if ok := must(t, r1.SetXX(ctx, "xx", "v", 0)); ok {
		t.Fatal("SET XX of a missing key succeeded")
	}
	if ok := must(t, r2.SetXX(ctx, "nx", "second", 0)); !ok {
		t.Fatal("SET XX of an existing key failed")
	}
	if got := must(t, r1.Get(ctx, "nx")); got != "second" {
		t.Fatalf("after SET XX: %q", got)
	}
	if n := must(t, r1.Exists(ctx, "xx")); n != 0 {
		t.Fatal("SET XX created its key")
	}

	// TTLs: EX, PX, EXPIRE, TTL, PERSIST, expiry.
	must(t, r1.Set(ctx, "ex", "v", 2*time.Second))
	if ttl := must(t, r2.TTL(ctx, "ex")); ttl <= 0 || ttl > 2*time.Second {
		t.Fatalf("TTL after SET EX 2: %v", ttl)
	}
	must(t, r1.Set(ctx, "px", "v", 300*time.Millisecond))
	if ttl := must(t, r1.PTTL(ctx, "px")); ttl <= 0 || ttl > 300*time.Millisecond {
		t.Fatalf("PTTL after SET PX 300: %v", ttl)
	}
	eventually(t, 10*time.Second, func() error {
		if err := r2.Get(ctx, "px").Err(); !errors.Is(err, redis.Nil) {
			return fmt.Errorf("px not expired yet: %v", err)
		}
		return nil
	})
	if ttl := must(t, r1.TTL(ctx, "px")); ttl != -2 {
		t.Fatalf("TTL of an expired key: %v, want -2", ttl)
	}
	if ttl := must(t, r1.TTL(ctx, "k1")); ttl != -1 {
		t.Fatalf("TTL of a key without expiry: %v, want -1", ttl)
	}
	if ok := must(t, r1.Expire(ctx, "k1", 100*time.Second)); !ok {
		t.Fatal("EXPIRE of an existing key returned 0")
	}
	if ttl := must(t, r2.TTL(ctx, "k1")); ttl < 99*time.Second || ttl > 100*time.Second {
		t.Fatalf("TTL after EXPIRE 100: %v", ttl)
	}
	if got := must(t, r2.Get(ctx, "k1")); got != "v1" {
		t.Fatalf("EXPIRE changed the value: %q", got)
	}
	if ok := must(t, r1.Persist(ctx, "k1")); !ok {
		t.Fatal("PERSIST of a key with a TTL returned 0")
	}
	if ttl := must(t, r1.TTL(ctx, "k1")); ttl != -1 {
		t.Fatalf("TTL after PERSIST: %v", ttl)
	}
	if ok := must(t, r1.Persist(ctx, "k1")); ok {
		t.Fatal("PERSIST of a key without TTL returned 1")
	}
	if ok := must(t, r1.Expire(ctx, "missing", time.Second)); ok {
		t.Fatal("EXPIRE of a missing key returned 1")
	}
	if ok := must(t, r1.PExpire(ctx, "k2", 200*time.Millisecond)); !ok {
		t.Fatal("PEXPIRE returned 0")
	}
	eventually(t, 10*time.Second, func() error {
		if n := r1.Exists(ctx, "k2").Val(); n != 0 {
			return errors.New("k2 not expired yet")
		}
		return nil
	})
	wantErr(t, r1.Do(ctx, "SET", "a", "b", "KEEPTTL").Err(), "not supported")
	wantErr(t, r1.Do(ctx, "SET", "a", "b", "EX", "0").Err(), "invalid expire time")
	wantErr(t, r1.Do(ctx, "SET", "a", "b", "NX", "XX").Err(), "syntax error")

	// INCR and friends: 64-bit, errors change nothing, the TTL stays.
	if n := must(t, r1.Incr(ctx, "ctr")); n != 1 {
		t.Fatalf("INCR of a missing key: %d", n)
	}
	if n := must(t, r2.IncrBy(ctx, "ctr", 1<<40)); n != 1<<40+1 {
		t.Fatalf("INCRBY 2^40: %d", n)
	}
	if n := must(t, r1.DecrBy(ctx, "ctr", 2)); n != 1<<40-1 {
		t.Fatalf("DECRBY: %d", n)
	}
	if n := must(t, r1.Decr(ctx, "ctr")); n != 1<<40-2 {
		t.Fatalf("DECR: %d", n)
	}
	must(t, r1.Set(ctx, "word", "abc", 0))
	wantErr(t, r1.Incr(ctx, "word").Err(), "not an integer")
	if got := must(t, r1.Get(ctx, "word")); got != "abc" {
		t.Fatalf("INCR of a non-integer changed it to %q", got)
	}
	must(t, r1.Set(ctx, "big", "9223372036854775807", 0))
	wantErr(t, r1.Incr(ctx, "big").Err(), "overflow")
	if got := must(t, r1.Get(ctx, "big")); got != "9223372036854775807" {
		t.Fatalf("an overflowing INCR changed the value to %q", got)
	}
	must(t, r1.Set(ctx, "ttlctr", "5", time.Minute))
	if n := must(t, r1.Incr(ctx, "ttlctr")); n != 6 {
		t.Fatalf("INCR: %d", n)
	}
	if ttl := must(t, r1.TTL(ctx, "ttlctr")); ttl < 58*time.Second {
		t.Fatalf("INCR dropped the TTL: %v", ttl)
	}

	// MSET/MGET: one hash tag is one partition, written atomically.
	must(t, r1.MSet(ctx, "{u1}:name", "ann", "{u1}:age", "41", "{u1}:city", "oslo"))
	if got := must(t, r2.MGet(ctx, "{u1}:name", "{u1}:age", "nope", "{u1}:city")); fmt.Sprint(got) != "[ann 41 <nil> oslo]" {
		t.Fatalf("MGET: %v", got)
	}
	var pairs []any
	for i := range 40 {
		pairs = append(pairs, fmt.Sprintf("spread%d", i), i)
	}
	must(t, r2.MSet(ctx, pairs...))
	for i := range 40 {
		if got := must(t, r1.Get(ctx, fmt.Sprintf("spread%d", i))); got != fmt.Sprint(i) {
			t.Fatalf("spread%d after MSET across partitions: %q", i, got)
		}
	}
	if ok := must(t, r1.MSetNX(ctx, "{u2}:a", "1", "{u2}:b", "2")); !ok {
		t.Fatal("MSETNX of new keys failed")
	}
	if ok := must(t, r1.MSetNX(ctx, "{u2}:b", "x", "{u2}:c", "3")); ok {
		t.Fatal("MSETNX with an existing key succeeded")
	}
	if n := must(t, r1.Exists(ctx, "{u2}:c")); n != 0 {
		t.Fatal("a refused MSETNX wrote a key")
	}
	wantErr(t, r1.MSetNX(ctx, "spread1", "x", "spread2", "y").Err(), "one partition")
	wantErr(t, r1.Do(ctx, "MSET", "a").Err(), "wrong number of arguments")

	// DEL and EXISTS count keys.
	if n := must(t, r1.Exists(ctx, "k3", "k4", "missing", "k3")); n != 3 {
		t.Fatalf("EXISTS k3 k4 missing k3: %d", n)
	}
	if n := must(t, r2.Del(ctx, "k3", "k4", "missing")); n != 2 {
		t.Fatalf("DEL: %d", n)
	}
	if n := must(t, r1.Exists(ctx, "k3", "k4")); n != 0 {
		t.Fatalf("EXISTS after DEL: %d", n)
	}

	// SCAN MATCH/COUNT returns every matching key exactly once, across
	// partitions and connections.
	for i := range 120 {
		pairs = append(pairs[:0], fmt.Sprintf("scan:%d", i), "v", fmt.Sprintf("other:%d", i), "v")
		must(t, r1.MSet(ctx, pairs...))
	}
	seen := map[string]int{}
	iter := r2.Scan(ctx, 0, "scan:*", 7).Iterator()
	for iter.Next(ctx) {
		seen[iter.Val()]++
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 120 {
		t.Fatalf("SCAN MATCH scan:* found %d distinct keys, want 120", len(seen))
	}
	for k, n := range seen {
		if n != 1 || !strings.HasPrefix(k, "scan:") {
			t.Fatalf("SCAN returned %q %d times", k, n)
		}
	}
	all := 0
	for cursor := uint64(0); ; {
		keys, next := r1.Scan(ctx, cursor, "", 50).Val()
		all += len(keys)
		if cursor = next; cursor == 0 {
			break
		}
	}
	if all < 240 {
		t.Fatalf("SCAN without MATCH found %d keys, want at least 240", all)
	}
	if got := made[[]any](t)(r1.Do(ctx, "SCAN", "0", "MATCH", "scan:1[0-1]?", "COUNT", "1000").Slice()); len(got[1].([]any)) != 20 {
		t.Fatalf("SCAN MATCH scan:1[0-1]?: %v", got[1])
	}
	wantErr(t, r1.Do(ctx, "SCAN", "12345").Err(), "invalid cursor")

	// SELECT names a map; keys of maps are apart.
	conn := r1.Conn()
	defer conn.Close()
	must(t, conn.Do(ctx, "SELECT", "second"))
	if err := conn.Get(ctx, "k5").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k5 in map second: %v, want nil", err)
	}
	must(t, conn.Set(ctx, "k5", "in-second", 0))
	if got := must(t, r2.Get(ctx, "k5")); got != "v5" {
		t.Fatalf("map redis's k5 after a SET in map second: %q", got)
	}
	wantErr(t, conn.Do(ctx, "SELECT", "nosuchmap").Err(), "unknown map")
	must(t, conn.Do(ctx, "SELECT", "0"))
	if got := must(t, conn.Get(ctx, "k5")); got != "v5" {
		t.Fatalf("after SELECT 0: %q", got)
	}
	// READONLY: stale reads, which catch up.
	must(t, conn.Do(ctx, "READONLY"))
	must(t, r1.Set(ctx, "stale", "x", 0))
	eventually(t, 10*time.Second, func() error {
		if got, _ := conn.Get(ctx, "stale").Result(); got != "x" {
			return fmt.Errorf("stale read: %q", got)
		}
		return nil
	})

	// What is not served says so.
	wantErr(t, r1.Do(ctx, "LPUSH", "l", "x").Err(), "unsupported command")
	wantErr(t, r1.Do(ctx, "FLUSHALL").Err(), "unsupported command")
	wantErr(t, r1.Do(ctx, "EXPIRE", "k5", "10", "NX").Err(), "not supported")
	info := must(t, r2.Info(ctx))
	if !strings.Contains(info, "redis_version:") || !strings.Contains(info, "node_id:n2") {
		t.Fatalf("INFO: %s", info)
	}
	if got := must(t, r2.Echo(ctx, "hi")); got != "hi" {
		t.Fatalf("ECHO: %q", got)
	}
}

// TestRESPAuth: under TLS a Redis client needs a certificate or a token,
// and each command needs its role.
func TestRESPAuth(t *testing.T) {
	lc := startRESPCluster(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := lc.RESPAddr("n1")
	admin := respClient(t, addr, respTLS(t, clientTLSDir), "", 3)
	eventually(t, 30*time.Second, func() error { return admin.Set(ctx, "k", "v", 0).Err() })

	// No certificate, no token: nothing but AUTH.
	anon := respClient(t, addr, respTLS(t, ""), "", 2)
	wantErr(t, anon.Get(ctx, "k").Err(), "NOAUTH")
	wantErr(t, anon.Set(ctx, "k", "x", 0).Err(), "NOAUTH")
	wantErr(t, anon.Ping(ctx).Err(), "NOAUTH")

	// A wrong token.
	bad := respClient(t, addr, respTLS(t, ""), "zgt1.bogus.token", 2)
	wantErr(t, bad.Get(ctx, "k").Err(), "WRONGPASS")
	other := t.TempDir()
	if err := gridtls.NewCA(other, "another CA"); err != nil {
		t.Fatal(err)
	}
	foreign := made[string](t)(gridtls.IssueToken(other, "mallory", []string{"admin"}, 0))
	wantErr(t, respClient(t, addr, respTLS(t, ""), foreign, 3).Get(ctx, "k").Err(), "WRONGPASS")

	// A read-only token reads and may not write; a writer's token writes.
	reader := made[string](t)(gridtls.IssueToken(caDir, "reader", []string{"read"}, 0))
	rd := respClient(t, addr, respTLS(t, ""), reader, 3)
	if got := must(t, rd.Get(ctx, "k")); got != "v" {
		t.Fatalf("GET with a read token: %q", got)
	}
	for _, err := range []error{rd.Set(ctx, "k", "x", 0).Err(), rd.Del(ctx, "k").Err(), rd.Incr(ctx, "n").Err(),
		rd.MSet(ctx, "a", "b").Err(), rd.Expire(ctx, "k", time.Minute).Err()} {
		wantErr(t, err, "NOPERM")
	}
	writer := made[string](t)(gridtls.IssueToken(caDir, "writer", []string{"read", "write"}, 0))
	wr := respClient(t, addr, respTLS(t, ""), writer, 2)
	must(t, wr.Set(ctx, "k", "w", 0))
	// AUTH user token: the user must be "default" or the token's name.
	c := wr.Conn()
	defer c.Close()
	wantErr(t, c.Do(ctx, "AUTH", "someoneelse", writer).Err(), "WRONGPASS")
	must(t, c.Do(ctx, "AUTH", "writer", writer))

	// A client certificate with the read role only.
	certDir := filepath.Join(t.TempDir(), "ro")
	if err := gridtls.IssueClient(caDir, certDir, "ro-cert", []string{"read"}); err != nil {
		t.Fatal(err)
	}
	ro := respClient(t, addr, respTLS(t, certDir), "", 3)
	if got := must(t, ro.Get(ctx, "k")); got != "w" {
		t.Fatalf("GET with a read certificate: %q", got)
	}
	wantErr(t, ro.Set(ctx, "k", "x", 0).Err(), "NOPERM")
	if got := must(t, admin.Get(ctx, "k")); got != "w" {
		t.Fatalf("a refused SET changed k to %q", got)
	}

	// Plain RESP to a TLS front door gets nowhere.
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(raw, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nplain\r\n")
	if line, _ := bufio.NewReader(raw).ReadString('\n'); strings.HasPrefix(line, "+OK") {
		t.Fatal("a plain-text SET was accepted by the TLS front door")
	}
	if got := must(t, admin.Get(ctx, "k")); got != "w" {
		t.Fatalf("k after a plain-text SET: %q", got)
	}
}

// TestRESPBadInput sends malformed and oversized commands on raw
// connections (insecure cluster): each is refused with -ERR and changes
// nothing; a protocol error closes its connection, as Redis does.
func TestRESPBadInput(t *testing.T) {
	lc := startRESPCluster(t, true)
	addr := lc.RESPAddr("n2")
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, bufio.NewReader(c)
	}
	reply := func(r *bufio.Reader) string {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a reply: %v", err)
		}
		return strings.TrimRight(line, "\r\n")
	}
	closed := func(r *bufio.Reader) {
		t.Helper()
		if line, err := r.ReadString('\n'); err == nil {
			t.Fatalf("the connection stayed open after a protocol error; it sent %q", line)
		}
	}
	c, r := dial()
	eventually(t, 30*time.Second, func() error {
		fmt.Fprint(c, "*3\r\n$3\r\nSET\r\n$4\r\nbase\r\n$2\r\nok\r\n")
		if got := reply(r); got != "+OK" {
			return errors.New(got)
		}
		return nil
	})

	// A value over the limit (1 MiB by default): refused, connection kept.
	big := strings.Repeat("x", grid.DefaultLimits().MaxValueBytes+1)
	fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$%d\r\n%s\r\n", len(big), big)
	if got := reply(r); !strings.HasPrefix(got, "-ERR") || !strings.Contains(got, "value too large") {
		t.Fatalf("oversized SET: %q", got)
	}
	fmt.Fprint(c, "*2\r\n$6\r\nEXISTS\r\n$4\r\nhuge\r\n")
	if got := reply(r); got != ":0" {
		t.Fatalf("EXISTS after a refused oversized SET: %q", got)
	}
	// A key over the key limit.
	long := strings.Repeat("k", grid.DefaultLimits().MaxKeyBytes+1)
	fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n", len(long), long)
	if got := reply(r); !strings.HasPrefix(got, "-ERR") || !strings.Contains(got, "key too large") {
		t.Fatalf("SET of an oversized key: %q", got)
	}
	// Unknown commands, wrong arity, inline commands.
	fmt.Fprint(c, "*1\r\n$7\r\nHGETALL\r\n")
	if got := reply(r); !strings.HasPrefix(got, "-ERR unknown or unsupported command 'HGETALL'") {
		t.Fatalf("HGETALL: %q", got)
	}
	fmt.Fprint(c, "*1\r\n$3\r\nGET\r\n")
	if got := reply(r); !strings.HasPrefix(got, "-ERR wrong number of arguments") {
		t.Fatalf("GET without a key: %q", got)
	}
	fmt.Fprint(c, "PING\r\nGET base\r\n")
	if got, got2 := reply(r), reply(r); got != "+PONG" || got2 != "$2" {
		t.Fatalf("inline PING, GET: %q %q", got, got2)
	}
	reply(r) // "ok"

	// Protocol errors: the reply says so and the connection closes.
	for _, bad := range []string{
		"*99999999\r\n",                  // a huge multi-bulk count
		"*1\r\n$99999999999\r\n",         // a huge bulk length
		"*2\r\n$3\r\nGET\r\n:1\r\n",      // not a bulk
		"*1\r\n$4\r\nPINGxx\r\n",         // a bulk not ended by CRLF
		"*-x\r\n",                        // not a number
		strings.Repeat("a", 70<<10) + "", // an inline line with no end
	} {
		c, r := dial()
		fmt.Fprint(c, bad)
		if got := reply(r); !strings.HasPrefix(got, "-ERR Protocol error") {
			t.Fatalf("%.30q: %q", bad, got)
		}
		closed(r)
	}
	fmt.Fprint(c, "*2\r\n$3\r\nGET\r\n$4\r\nbase\r\n")
	if got := reply(r); got != "$2" {
		t.Fatalf("the first connection after the others' errors: %q", got)
	}
}

// TestRESPLeaderKill writes with SET through a surviving node while the
// leader of the keys' partition is killed (SIGKILL): every SET that was
// acknowledged is read back afterwards.
func TestRESPLeaderKill(t *testing.T) {
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: 8, Replicas: 3, RESP: true}, "redis")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	part := grid.PartitionOf("redis", []byte("{kill}"), 8)
	var victim string
	eventually(t, 30*time.Second, func() error {
		if victim = partitionLeader(ctx, c, lc, part); victim == "" {
			return errors.New("no leader yet")
		}
		return nil
	})
	via := "n1"
	if victim == via {
		via = "n2"
	}
	rdb := respClient(t, lc.RESPAddr(via), respTLS(t, clientTLSDir), "", 3)
	eventually(t, 30*time.Second, func() error { return rdb.Set(ctx, "{kill}:warm", "1", 0).Err() })

	var (
		mu      sync.Mutex
		acked   = map[string]string{}
		refused = map[string]int{}
		wg      sync.WaitGroup
	)
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; wctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("{kill}:w%d:%d", w, i), fmt.Sprintf("v%d", i)
				err := rdb.Set(wctx, k, v, 0).Err()
				mu.Lock()
				if err == nil {
					acked[k] = v
				} else {
					refused[strings.Fields(err.Error())[0]]++
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second) // writes before the kill
	if err := lc.Kill(victim); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s, leader of partition %d; writing through %s", victim, part, via)
	mu.Lock()
	atKill := len(acked)
	mu.Unlock()
	eventually(t, 60*time.Second, func() error { // writes after the failover
		if err := rdb.Set(ctx, "{kill}:after", "1", 0).Err(); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < atKill+200 {
			return fmt.Errorf("%d acknowledged writes since the kill (refused or unsure: %v)", len(acked)-atKill, refused)
		}
		return nil
	})
	stopWriters()
	wg.Wait()
	t.Logf("%d SETs acknowledged; refused or unsure: %v", len(acked), refused)
	for k, v := range acked {
		got, err := rdb.Get(ctx, k).Result()
		if err != nil || got != v {
			t.Fatalf("acknowledged SET %s=%s lost: got %q, %v", k, v, got, err)
		}
	}
}

// TestRESPRedisCLI is a smoke test with redis-cli over TLS with the
// client certificate (.ci/run installs redis-tools).
func TestRESPRedisCLI(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli not installed (apt-get install redis-tools; .ci/run installs it)")
	}
	lc := startRESPCluster(t, false)
	host, port, _ := net.SplitHostPort(lc.RESPAddr("n3"))
	run := func(args ...string) string {
		t.Helper()
		base := []string{"-h", host, "-p", port, "--tls", "--cacert", filepath.Join(clientTLSDir, gridtls.CACert),
			"--cert", filepath.Join(clientTLSDir, gridtls.ClientCert), "--key", filepath.Join(clientTLSDir, gridtls.ClientKey)}
		out, err := exec.Command(cli, append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	eventually(t, 30*time.Second, func() error {
		if out := run("SET", "greeting", "hello world"); out != "OK" {
			return errors.New(out)
		}
		return nil
	})
	if out := run("GET", "greeting"); out != "hello world" {
		t.Fatalf("redis-cli GET: %q", out)
	}
	if out := run("INCRBY", "n", "5"); out != "5" {
		t.Fatalf("redis-cli INCRBY: %q", out)
	}
	if out := run("LPUSH", "l", "x"); !strings.Contains(out, "unsupported command") {
		t.Fatalf("redis-cli LPUSH: %q", out)
	}
}

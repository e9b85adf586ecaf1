package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/redcon"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// respCmd is one Redis command the front door serves: the gRPC methods
// whose roles it needs (security.authorize decides, as for gRPC calls;
// none: any authenticated caller) and the arguments it takes.
type respCmd struct {
	methods []string
	minArgs int // including the command's name
	run     func(rc *respConn, args [][]byte)
}

// respCommands names the commands served, for INFO and for the reply to an
// unknown one.
const respCommands = "GET SET DEL EXISTS EXPIRE PEXPIRE TTL PTTL PERSIST INCR INCRBY DECR DECRBY MGET MSET MSETNX SCAN " +
	"PING ECHO INFO SELECT AUTH HELLO QUIT READONLY READWRITE CLIENT COMMAND CONFIG"

// respCommand is the command named name (upper case).
func respCommand(name string) (respCmd, bool) {
	// The methods whose roles commands need.
	get, cas := gridpb.KV_Get_FullMethodName, gridpb.KV_CompareAndSwap_FullMethodName
	txn, any_ := gridpb.KV_Txn_FullMethodName, gridpb.Admin_GetTable_FullMethodName
	switch name {
	case "GET":
		return respCmd{[]string{get}, 2, (*respConn).get}, true
	case "SET":
		return respCmd{[]string{gridpb.KV_Put_FullMethodName, cas, txn}, 3, (*respConn).set}, true
	case "DEL":
		return respCmd{[]string{gridpb.KV_Delete_FullMethodName}, 2, (*respConn).del}, true
	case "EXISTS":
		return respCmd{[]string{get}, 2, (*respConn).exists}, true
	case "EXPIRE", "PEXPIRE":
		return respCmd{[]string{get, cas}, 3, (*respConn).expire}, true
	case "TTL", "PTTL":
		return respCmd{[]string{get}, 2, (*respConn).ttl}, true
	case "PERSIST":
		return respCmd{[]string{get, cas}, 2, (*respConn).persist}, true
	case "INCR", "DECR":
		return respCmd{[]string{get, cas}, 2, (*respConn).incr}, true
	case "INCRBY", "DECRBY":
		return respCmd{[]string{get, cas}, 3, (*respConn).incr}, true
	case "MGET":
		return respCmd{[]string{get}, 2, (*respConn).mget}, true
	case "MSET":
		return respCmd{[]string{txn}, 3, (*respConn).mset}, true
	case "MSETNX":
		return respCmd{[]string{txn}, 3, (*respConn).msetnx}, true
	case "SCAN":
		return respCmd{[]string{gridpb.KV_Scan_FullMethodName}, 2, (*respConn).scan}, true
	case "PING":
		return respCmd{[]string{any_}, 1, (*respConn).ping}, true
	case "ECHO":
		return respCmd{[]string{any_}, 2, func(rc *respConn, args [][]byte) { rc.bulk(args[1]) }}, true
	case "INFO":
		return respCmd{[]string{gridpb.Admin_Status_FullMethodName}, 1, (*respConn).info}, true
	case "SELECT":
		return respCmd{[]string{gridpb.Admin_ListMaps_FullMethodName}, 2, (*respConn).selectMap}, true
	case "AUTH":
		return respCmd{nil, 2, (*respConn).auth}, true
	case "HELLO":
		return respCmd{nil, 1, (*respConn).hello}, true
	case "QUIT":
		return respCmd{nil, 1, func(rc *respConn, _ [][]byte) { rc.quit = true; rc.simple("OK") }}, true
	case "READONLY", "READWRITE":
		return respCmd{nil, 1, func(rc *respConn, args [][]byte) {
			rc.stale = strings.EqualFold(string(args[0]), "READONLY")
			rc.simple("OK")
		}}, true
	case "CLIENT":
		return respCmd{nil, 2, (*respConn).client}, true
	case "COMMAND":
		// redis-cli asks for command docs at start; it does without.
		return respCmd{nil, 1, func(rc *respConn, _ [][]byte) { rc.out = redcon.AppendArray(rc.out, 0) }}, true
	case "CONFIG":
		// redis-benchmark reads a few settings at start; there are none.
		return respCmd{nil, 2, (*respConn).config}, true
	}
	return respCmd{}, false
}

// exec runs one command and appends its reply.
func (rc *respConn) exec(args [][]byte) {
	name := strings.ToUpper(string(args[0]))
	cmd, ok := respCommand(name)
	switch {
	case !ok:
		rc.errorf("ERR unknown or unsupported command '%s' (zerogrid's Redis front door serves %s)", clip(args[0]), respCommands)
		return
	case !rc.authd && name != "AUTH" && name != "HELLO" && name != "QUIT":
		rc.errorf("NOAUTH Authentication required: connect with a client certificate from the cluster CA, or AUTH <token> ('zerogrid cert token')")
		return
	case len(args) < cmd.minArgs:
		rc.errorf("ERR wrong number of arguments for '%s' command", strings.ToLower(name))
		return
	}
	for _, m := range cmd.methods {
		start := time.Now()
		if err := rc.srv.n.sec.authorize(rc.ctx, m, nil); err != nil {
			rc.srv.n.sec.auditCall(rc.ctx, m, nil, start, err, true)
			rc.fail(gridpb.FromStatus(err))
			return
		}
	}
	cmd.run(rc, args)
}

// clip shortens a client's bytes for an error message.
func clip(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, string(b))
}

// Replies.

func (rc *respConn) simple(s string) { rc.out = redcon.AppendString(rc.out, s) }
func (rc *respConn) integer(n int64) { rc.out = redcon.AppendInt(rc.out, n) }
func (rc *respConn) bulk(b []byte)   { rc.out = redcon.AppendBulk(rc.out, b) }

func (rc *respConn) null() {
	if rc.proto == 3 {
		rc.out = append(rc.out, "_\r\n"...)
		return
	}
	rc.out = redcon.AppendNull(rc.out)
}

func (rc *respConn) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	rc.out = redcon.AppendError(rc.out, strings.NewReplacer("\r", " ", "\n", " ").Replace(msg))
}

// fail replies with err, its Redis error code chosen by its kind.
func (rc *respConn) fail(err error) { rc.errorf("%s", respErrorText(err)) }

// respReply is an error that is already a Redis error reply ("ERR ...").
type respReply string

func (e respReply) Error() string { return string(e) }

func respErrorText(err error) string {
	var reply respReply
	if errors.As(err, &reply) {
		return string(reply)
	}
	code := "ERR"
	switch {
	case errors.Is(err, grid.ErrAmbiguous):
		code = "AMBIGUOUS" // not "not written": the write may have been applied
	case errors.Is(err, grid.ErrUnauthenticated):
		code = "NOAUTH"
	case errors.Is(err, grid.ErrPermissionDenied):
		code = "NOPERM"
	case errors.Is(err, grid.ErrNoLeader), errors.Is(err, grid.ErrNotLeader):
		code = "CLUSTERDOWN"
	case errors.Is(err, grid.ErrOverloaded), errors.Is(err, grid.ErrTooManyRequests):
		code = "BUSY"
	}
	return code + " " + err.Error()
}

// maybeFlush writes out a large pending reply in the middle of a command
// (MGET of large values) so a connection holds at most about one value.
func (rc *respConn) maybeFlush() {
	if len(rc.out) >= respFlushAt {
		if rc.flush() != nil {
			rc.quit = true
		}
	}
}

// Keys, partitions and requests.

func (rc *respConn) partition(key []byte) int {
	return grid.PartitionOf(rc.mapN, key, rc.srv.n.table().NumPartitions())
}

func (rc *respConn) readRoute() (respRoute, gridpb.Consistency) {
	if rc.stale {
		return routeStale, gridpb.Consistency_STALE
	}
	return routeRead, gridpb.Consistency_LINEARIZABLE
}

// header is a new write's header: every attempt of that write carries it.
func (rc *respConn) header() *gridpb.WriteHeader {
	rc.seq++
	return &gridpb.WriteHeader{Map: rc.mapN, ClientId: rc.clientID, Seq: rc.seq}
}

// read gets key (nil, not an error, when absent); leader says the read must
// be linearizable whatever the connection chose (a read that decides a
// conditional write).
func (rc *respConn) read(key []byte, leader bool) (*gridpb.GetResponse, error) {
	route, cons := rc.readRoute()
	if leader {
		route, cons = routeRead, gridpb.Consistency_LINEARIZABLE
	}
	var resp *gridpb.GetResponse
	err := rc.srv.at(rc.ctx, rc.partition(key), route, func(ctx context.Context, kv kvCalls) error {
		r, err := kv.Get(ctx, &gridpb.GetRequest{Map: rc.mapN, Key: key, Consistency: cons})
		resp = r
		return err
	})
	if err != nil || !resp.Found {
		return nil, err
	}
	return resp, nil
}

func (rc *respConn) write(key []byte, call func(context.Context, kvCalls) error) error {
	return rc.srv.at(rc.ctx, rc.partition(key), routeWrite, call)
}

// cas replaces key's value at version (0: absent) with value and ttl, or
// deletes it; false if the key changed since it was read.
func (rc *respConn) cas(key []byte, version uint64, value []byte, ttl int64, del bool) (bool, error) {
	req := &gridpb.CompareAndSwapRequest{Header: rc.header(), Key: key, ExpectedVersion: version, Value: value, TtlNanos: ttl, Delete: del}
	var swapped bool
	err := rc.write(key, func(ctx context.Context, kv kvCalls) error {
		r, err := kv.CompareAndSwap(ctx, req)
		if err == nil {
			swapped = r.Swapped
		}
		return err
	})
	return swapped, err
}

// respCASRounds bounds the read-then-compare-and-swap rounds of one
// command (INCR, EXPIRE, PERSIST) on a key other writers keep changing.
const respCASRounds = 32

// update runs a read-modify-write of key at its leader until its
// compare-and-swap holds: f sees the current entry (nil: absent) and
// returns whether to write (and what), and the reply.
func (rc *respConn) update(key []byte, f func(cur *gridpb.GetResponse) (write bool, value []byte, ttl int64, del bool, err error)) error {
	for range respCASRounds {
		cur, err := rc.read(key, true)
		if err != nil {
			return err
		}
		write, value, ttl, del, err := f(cur)
		if err != nil || !write {
			return err
		}
		var version uint64
		if cur != nil {
			version = cur.Version
		}
		ok, err := rc.cas(key, version, value, ttl, del)
		if err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("%w: %q changed %d times while this command ran; nothing was done", grid.ErrContended, key, respCASRounds)
}

// remaining is the time to live left of an entry with an expiry; at least
// grid.MinTTL (an entry read is not yet expired).
func remaining(expiry int64) int64 {
	return max(expiry-time.Now().UnixNano(), int64(grid.MinTTL))
}

// parseInt64 parses a Redis integer argument: an optional '-', then digits
// without a leading zero, in int64 range (Redis's string2ll).
func parseInt64(b []byte) (int64, bool) {
	s := string(b)
	if s == "" || s == "-" || len(s) > 20 || strings.HasPrefix(s, "+") ||
		(len(s) > 1 && s[0] == '0') || strings.HasPrefix(s, "-0") {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

const errNotInteger respReply = "ERR value is not an integer or out of range"

// Commands.

func (rc *respConn) get(args [][]byte) {
	if len(args) != 2 {
		rc.errorf("ERR wrong number of arguments for 'get' command")
		return
	}
	rc.value(args[1])
}

// value replies with key's value, a null if it is absent, or the error
// that kept it from being read.
func (rc *respConn) value(key []byte) {
	e, err := rc.read(key, false)
	switch {
	case err != nil:
		rc.fail(err)
	case e == nil:
		rc.null()
	default:
		rc.bulk(e.Value)
	}
}

// ttlArg converts an expiry argument in unit to nanoseconds, within
// grid.MinTTL..grid.MaxTTL.
func ttlArg(b []byte, unit time.Duration, cmd string) (int64, error) {
	n, ok := parseInt64(b)
	if !ok {
		return 0, errNotInteger
	}
	if n <= 0 || n > int64(grid.MaxTTL/unit) || time.Duration(n)*unit < grid.MinTTL {
		return 0, respReply(fmt.Sprintf("ERR invalid expire time in '%s' command (zerogrid keeps keys %v to %v)", cmd, grid.MinTTL, grid.MaxTTL))
	}
	return n * int64(unit), nil
}

func (rc *respConn) set(args [][]byte) {
	key, value := args[1], args[2]
	var ttl int64
	nx, xx, expirySet := false, false, false
	for i := 3; i < len(args); i++ {
		opt := strings.ToUpper(string(args[i]))
		switch opt {
		case "NX":
			nx = true
		case "XX":
			xx = true
		case "EX", "PX":
			if expirySet || i+1 >= len(args) {
				rc.errorf("ERR syntax error")
				return
			}
			unit := time.Second
			if opt == "PX" {
				unit = time.Millisecond
			}
			i++
			var err error
			if ttl, err = ttlArg(args[i], unit, "set"); err != nil {
				rc.fail(err)
				return
			}
			expirySet = true
		case "KEEPTTL", "GET", "EXAT", "PXAT", "IFEQ":
			rc.errorf("ERR SET option %s is not supported by zerogrid (supported: NX, XX, EX, PX)", opt)
			return
		default:
			rc.errorf("ERR syntax error")
			return
		}
	}
	if nx && xx {
		rc.errorf("ERR syntax error")
		return
	}
	h := rc.header()
	done := true
	err := rc.write(key, func(ctx context.Context, kv kvCalls) error {
		switch {
		case nx: // absent: version 0
			r, err := kv.CompareAndSwap(ctx, &gridpb.CompareAndSwapRequest{Header: h, Key: key, Value: value, TtlNanos: ttl})
			if err == nil {
				done = r.Swapped
			}
			return err
		case xx:
			r, err := kv.Txn(ctx, &gridpb.TxnRequest{Header: h,
				Compares: []*gridpb.TxnCompare{{Key: key, Target: gridpb.TxnCompare_EXISTS}},
				ThenOps:  []*gridpb.TxnWrite{{Key: key, Value: value, TtlNanos: ttl}}})
			if err == nil {
				done = r.Succeeded
			}
			return err
		}
		_, err := kv.Put(ctx, &gridpb.PutRequest{Header: h, Key: key, Value: value, TtlNanos: ttl})
		return err
	})
	switch {
	case err != nil:
		rc.fail(err)
	case done:
		rc.simple("OK")
	default:
		rc.null()
	}
}

func (rc *respConn) del(args [][]byte) {
	var n int64
	for _, key := range args[1:] {
		req := &gridpb.DeleteRequest{Header: rc.header(), Key: key}
		err := rc.write(key, func(ctx context.Context, kv kvCalls) error {
			r, err := kv.Delete(ctx, req)
			if err == nil && r.Existed {
				n++
			}
			return err
		})
		if err != nil {
			rc.fail(fmt.Errorf("after %d keys deleted: %w", n, err))
			return
		}
	}
	rc.integer(n)
}

func (rc *respConn) exists(args [][]byte) {
	var n int64
	for _, key := range args[1:] {
		e, err := rc.read(key, false)
		if err != nil {
			rc.fail(err)
			return
		}
		if e != nil {
			n++
		}
	}
	rc.integer(n)
}

func (rc *respConn) expire(args [][]byte) {
	cmd := strings.ToLower(string(args[0]))
	if len(args) > 3 {
		rc.errorf("ERR %s options (NX, XX, GT, LT) are not supported by zerogrid", strings.ToUpper(cmd))
		return
	}
	unit := time.Second
	if cmd == "pexpire" {
		unit = time.Millisecond
	}
	n, ok := parseInt64(args[2])
	if !ok {
		rc.fail(errNotInteger)
		return
	}
	var ttl int64
	if n > 0 { // zero or less deletes the key, as in Redis
		var err error
		if ttl, err = ttlArg(args[2], unit, cmd); err != nil {
			rc.fail(err)
			return
		}
	}
	var found bool
	err := rc.update(args[1], func(cur *gridpb.GetResponse) (bool, []byte, int64, bool, error) {
		found = cur != nil
		if !found {
			return false, nil, 0, false, nil
		}
		return true, cur.Value, ttl, ttl == 0, nil
	})
	switch {
	case err != nil:
		rc.fail(err)
	case found:
		rc.integer(1)
	default:
		rc.integer(0)
	}
}

func (rc *respConn) ttl(args [][]byte) {
	e, err := rc.read(args[1], false)
	switch {
	case err != nil:
		rc.fail(err)
	case e == nil:
		rc.integer(-2)
	case e.Expiry == 0:
		rc.integer(-1)
	default:
		left := time.Duration(e.Expiry - time.Now().UnixNano())
		if left <= 0 {
			rc.integer(-2) // expired, not yet swept
			return
		}
		if strings.EqualFold(string(args[0]), "PTTL") {
			rc.integer(int64((left + time.Millisecond/2) / time.Millisecond))
		} else {
			rc.integer(int64((left + time.Second/2) / time.Second))
		}
	}
}

func (rc *respConn) persist(args [][]byte) {
	changed := false
	err := rc.update(args[1], func(cur *gridpb.GetResponse) (bool, []byte, int64, bool, error) {
		changed = cur != nil && cur.Expiry != 0
		if !changed {
			return false, nil, 0, false, nil
		}
		return true, cur.Value, 0, false, nil
	})
	switch {
	case err != nil:
		rc.fail(err)
	case changed:
		rc.integer(1)
	default:
		rc.integer(0)
	}
}

// incr is INCR, DECR, INCRBY and DECRBY: 64-bit signed arithmetic on every
// platform, refused on overflow or a value that is not an integer; the key
// keeps its time to live.
func (rc *respConn) incr(args [][]byte) {
	cmd := strings.ToUpper(string(args[0]))
	if (len(args) != 2 && (cmd == "INCR" || cmd == "DECR")) || (len(args) != 3 && (cmd == "INCRBY" || cmd == "DECRBY")) {
		rc.errorf("ERR wrong number of arguments for '%s' command", strings.ToLower(cmd))
		return
	}
	delta := int64(1)
	if len(args) == 3 {
		var ok bool
		if delta, ok = parseInt64(args[2]); !ok {
			rc.fail(errNotInteger)
			return
		}
	}
	if cmd == "DECR" || cmd == "DECRBY" {
		if delta == math.MinInt64 {
			rc.errorf("ERR decrement would overflow")
			return
		}
		delta = -delta
	}
	var result int64
	err := rc.update(args[1], func(cur *gridpb.GetResponse) (bool, []byte, int64, bool, error) {
		var n, ttl int64
		if cur != nil {
			var ok bool
			if n, ok = parseInt64(cur.Value); !ok {
				return false, nil, 0, false, errNotInteger
			}
			if cur.Expiry != 0 {
				ttl = remaining(cur.Expiry)
			}
		}
		if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
			return false, nil, 0, false, respReply("ERR increment or decrement would overflow")
		}
		result = n + delta
		return true, strconv.AppendInt(nil, result, 10), ttl, false, nil
	})
	if err != nil {
		rc.fail(err)
		return
	}
	rc.integer(result)
}

// mget streams its reply, one value at a time, so that a connection holds
// about one value at most; a key whose read fails gets an error in its
// place (as Redis puts errors in EXEC's reply).
func (rc *respConn) mget(args [][]byte) {
	keys := args[1:]
	rc.out = redcon.AppendArray(rc.out, len(keys))
	for _, key := range keys {
		rc.value(key)
		if rc.maybeFlush(); rc.quit {
			return // the connection broke
		}
	}
}

// msetGroups splits MSET's pairs by partition, in the order partitions are
// first named, a key named twice keeping its last value; it refuses (before
// anything is written) a partition's share larger than one transaction.
func (rc *respConn) msetGroups(args [][]byte) ([][]*gridpb.TxnWrite, []int, error) {
	if len(args)%2 != 1 {
		return nil, nil, respReply(fmt.Sprintf("ERR wrong number of arguments for '%s' command", strings.ToLower(string(args[0]))))
	}
	var groups [][]*gridpb.TxnWrite
	var parts []int
	at := map[int]int{}
	for i := 1; i < len(args); i += 2 {
		p := rc.partition(args[i])
		g, ok := at[p]
		if !ok {
			g = len(groups)
			at[p] = g
			groups, parts = append(groups, nil), append(parts, p)
		}
		w := &gridpb.TxnWrite{Key: args[i], Value: args[i+1]}
		if j := slicesIndexKey(groups[g], args[i]); j >= 0 {
			groups[g][j] = w
		} else {
			groups[g] = append(groups[g], w)
		}
	}
	limit := rc.srv.n.cfg.Limits.MaxValueBytes
	for g, ws := range groups {
		size := 0
		for _, w := range ws {
			size += len(w.Key) + len(w.Value)
		}
		if len(ws) > maxTxnOps || size > limit {
			return nil, nil, respReply(fmt.Sprintf("ERR the keys of partition %d carry %d keys and %d bytes; one atomic write takes at most %d keys and %d bytes (nothing was written)",
				parts[g], len(ws), size, maxTxnOps, limit))
		}
	}
	return groups, parts, nil
}

func slicesIndexKey(ws []*gridpb.TxnWrite, key []byte) int {
	for i, w := range ws {
		if bytes.Equal(w.Key, key) {
			return i
		}
	}
	return -1
}

// mset writes each partition's keys in one transaction (atomic within a
// partition: give related keys one {hash tag}); partitions are written one
// after another, so a failure part way leaves the earlier ones written, and
// the error says which.
func (rc *respConn) mset(args [][]byte) {
	groups, parts, err := rc.msetGroups(args)
	if err != nil {
		rc.fail(err)
		return
	}
	for g, ws := range groups {
		req := &gridpb.TxnRequest{Header: rc.header(), ThenOps: ws}
		err := rc.write(ws[0].Key, func(ctx context.Context, kv kvCalls) error {
			_, err := kv.Txn(ctx, req)
			return err
		})
		if err != nil {
			if g > 0 {
				err = fmt.Errorf("MSET is atomic per partition only: partitions %v were written, partition %d failed: %w", parts[:g], parts[g], err)
			}
			rc.fail(err)
			return
		}
	}
	rc.simple("OK")
}

// msetnx is MSETNX for keys of one partition (one {hash tag}): atomic.
func (rc *respConn) msetnx(args [][]byte) {
	groups, _, err := rc.msetGroups(args)
	if err != nil {
		rc.fail(err)
		return
	}
	if len(groups) > 1 {
		rc.errorf("ERR MSETNX keys must share one partition (one {hash tag}) here, where it is one atomic write; nothing was written")
		return
	}
	ws := groups[0]
	req := &gridpb.TxnRequest{Header: rc.header(), ThenOps: ws}
	for _, w := range ws {
		req.Compares = append(req.Compares, &gridpb.TxnCompare{Key: w.Key, Target: gridpb.TxnCompare_MISSING})
	}
	var ok bool
	err = rc.write(ws[0].Key, func(ctx context.Context, kv kvCalls) error {
		r, err := kv.Txn(ctx, req)
		if err == nil {
			ok = r.Succeeded
		}
		return err
	})
	switch {
	case err != nil:
		rc.fail(err)
	case ok:
		rc.integer(1)
	default:
		rc.integer(0)
	}
}

func (rc *respConn) ping(args [][]byte) {
	switch len(args) {
	case 1:
		rc.simple("PONG")
	case 2:
		rc.bulk(args[1])
	default:
		rc.errorf("ERR wrong number of arguments for 'ping' command")
	}
}

func (rc *respConn) selectMap(args [][]byte) {
	name := string(args[1])
	if name == "0" {
		name = rc.srv.n.cfg.RESPMap
		if name == "" {
			name = respDefaultMap
		}
	}
	if err := grid.ValidateMapName(name); err != nil {
		rc.errorf("ERR SELECT takes a map name (or 0 for %q): %v", respDefaultMap, err)
		return
	}
	if err := rc.srv.svc.requireMap(rc.ctx, name); err != nil {
		rc.fail(err)
		return
	}
	rc.mapN = name
	rc.simple("OK")
}

// auth takes a bearer token ('zerogrid cert token'): AUTH token, or AUTH
// user token where user is "default" or the token's name.
func (rc *respConn) auth(args [][]byte) {
	if err := rc.authenticate(args[1:]); err != nil {
		rc.fail(err)
		return
	}
	rc.simple("OK")
}

func (rc *respConn) authenticate(args [][]byte) error {
	if len(args) < 1 || len(args) > 2 {
		return respReply("ERR wrong number of arguments for 'auth' command")
	}
	sec := rc.srv.n.sec
	if sec.tls == nil {
		return nil // insecure: anyone is anyone
	}
	tok := string(args[len(args)-1])
	who, err := sec.tls.VerifyBearer("Bearer " + tok)
	if err == nil && len(args) == 2 && string(args[0]) != "default" && string(args[0]) != who.Name {
		err = fmt.Errorf("the token is %q's, not %q's", who.Name, args[0])
	}
	if err != nil {
		start := time.Now()
		sec.auditCall(rc.ctx, "RESP AUTH", nil, start, fmt.Errorf("%w: %v", grid.ErrUnauthenticated, err), true)
		return respReply("WRONGPASS invalid token: " + err.Error())
	}
	rc.setIdentity(who)
	return nil
}

func (rc *respConn) hello(args [][]byte) {
	proto := rc.proto
	if len(args) > 1 {
		v, ok := parseInt64(args[1])
		if !ok || v < 2 || v > 3 {
			rc.errorf("NOPROTO unsupported protocol version")
			return
		}
		proto = int(v)
	}
	for i := 2; i < len(args); i++ {
		switch strings.ToUpper(string(args[i])) {
		case "AUTH":
			if i+2 >= len(args) {
				rc.errorf("ERR syntax error in HELLO option 'auth'")
				return
			}
			if err := rc.authenticate(args[i+1 : i+3]); err != nil {
				rc.fail(err)
				return
			}
			i += 2
		case "SETNAME":
			i++
		default:
			rc.errorf("ERR syntax error in HELLO option '%s'", clip(args[i]))
			return
		}
	}
	if !rc.authd {
		rc.errorf("NOAUTH HELLO must be called with the client already authenticated, or with HELLO <proto> AUTH <user> <token>")
		return
	}
	rc.proto = proto
	fields := []string{"server", "redis", "version", respRedisVersion, "proto", strconv.Itoa(proto), "mode", "standalone", "role", "master"}
	if proto == 3 {
		rc.out = append(rc.out, '%')
		rc.out = strconv.AppendInt(rc.out, int64(len(fields)/2+1), 10)
		rc.out = append(rc.out, '\r', '\n')
	} else {
		rc.out = redcon.AppendArray(rc.out, len(fields)+2)
	}
	for i := 0; i < len(fields); i += 2 {
		rc.out = redcon.AppendBulkString(rc.out, fields[i])
		if fields[i] == "proto" {
			rc.integer(int64(proto))
		} else {
			rc.out = redcon.AppendBulkString(rc.out, fields[i+1])
		}
	}
	rc.out = redcon.AppendBulkString(rc.out, "modules")
	rc.out = redcon.AppendArray(rc.out, 0)
}

// respRedisVersion is the Redis version the front door says it speaks
// for: clients check it to choose commands.
const respRedisVersion = "7.2.0"

func (rc *respConn) client(args [][]byte) {
	switch strings.ToUpper(string(args[1])) {
	case "SETNAME", "SETINFO":
		rc.simple("OK")
	case "ID":
		rc.integer(int64(rc.clientID >> 1))
	default:
		rc.errorf("ERR CLIENT %s is not supported by zerogrid (CLIENT SETNAME, SETINFO and ID are)", clip(args[1]))
	}
}

func (rc *respConn) config(args [][]byte) {
	if !strings.EqualFold(string(args[1]), "GET") {
		rc.errorf("ERR CONFIG %s is not supported by zerogrid: a node is configured by its flags", clip(args[1]))
		return
	}
	if rc.proto == 3 {
		rc.out = append(rc.out, "%0\r\n"...)
		return
	}
	rc.out = redcon.AppendArray(rc.out, 0)
}

func (rc *respConn) info(args [][]byte) {
	n := rc.srv.n
	rc.srv.mu.Lock()
	clients := len(rc.srv.conns)
	rc.srv.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "# Server\r\nredis_version:%s\r\nzerogrid_version:%s\r\nredis_mode:standalone\r\nnode_id:%s\r\ngrpc_addr:%s\r\nresp_addr:%s\r\n",
		respRedisVersion, Version, n.cfg.ID, n.addr, rc.srv.Addr())
	fmt.Fprintf(&b, "tls:%t\r\nmap:%s\r\nreads:%s\r\npartitions:%d\r\n", n.sec.tls != nil, rc.mapN, map[bool]string{false: "linearizable", true: "stale (READONLY)"}[rc.stale], n.table().NumPartitions())
	fmt.Fprintf(&b, "\r\n# Clients\r\nconnected_clients:%d\r\nmaxclients:%d\r\n", clients, rc.srv.maxConn)
	led := 0
	for _, g := range n.host.Groups() {
		if g.IsLeader() {
			led++
		}
	}
	fmt.Fprintf(&b, "\r\n# Replication\r\nrole:master\r\npartition_groups_led_here:%d\r\n", led)
	fmt.Fprintf(&b, "\r\n# Keyspace\r\n")
	rc.bulk([]byte(b.String()))
}

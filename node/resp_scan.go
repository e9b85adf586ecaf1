package node

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"

	"github.com/tidwall/redcon"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// SCAN walks the map partition by partition in key order. Redis clients
// take a cursor for a number, so the front door keeps where each walk is
// (map, partition, last key) under a random number, node-wide (a client's
// pool may send the next SCAN on another connection to the same node). A
// key present from a walk's start to its end is returned; one written or
// deleted meanwhile may or may not be, as in Redis. A cursor lives until
// respMaxCursors newer ones have been handed out.

const respMaxCursors = 4096

type scanPos struct {
	mapName string
	part    int
	after   []byte
}

// scanCursors remembers the walks in progress; safe for concurrent use.
type scanCursors struct {
	mu    sync.Mutex
	pos   map[uint64]scanPos
	order []uint64 // oldest first, for eviction
}

func newScanCursors() *scanCursors { return &scanCursors{pos: map[uint64]scanPos{}} }

func (c *scanCursors) put(p scanPos) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := rand.Uint64()>>1 | 1 // not 0 (the end), and a valid int64
	for len(c.order) >= respMaxCursors {
		delete(c.pos, c.order[0])
		c.order = c.order[1:]
	}
	c.pos[id] = p
	c.order = append(c.order, id)
	return id
}

func (c *scanCursors) get(id uint64) (scanPos, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pos[id]
	return p, ok
}

// scan is SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: COUNT keys
// (default 10) are examined per call, in as many partitions as it takes.
func (rc *respConn) scan(args [][]byte) {
	pos := scanPos{mapName: rc.mapN}
	if string(args[1]) != "0" {
		id, err := strconv.ParseUint(string(args[1]), 10, 64)
		p, ok := rc.srv.cursors.get(id)
		if err != nil || !ok || p.mapName != rc.mapN {
			rc.errorf("ERR invalid cursor (a SCAN cursor is kept by the node that gave it, for the map it walks, until %d newer ones)", respMaxCursors)
			return
		}
		pos = p
	}
	count, pattern, strings_ := 10, "", true
	for i := 2; i < len(args); i += 2 {
		if i+1 >= len(args) {
			rc.errorf("ERR syntax error")
			return
		}
		switch strings.ToUpper(string(args[i])) {
		case "MATCH":
			pattern = string(args[i+1])
		case "COUNT":
			n, ok := parseInt64(args[i+1])
			if !ok || n < 1 {
				rc.errorf("ERR value is not an integer or out of range")
				return
			}
			count = int(min(n, maxScanLimit))
		case "TYPE":
			strings_ = strings.EqualFold(string(args[i+1]), "string") // every zerogrid value is a string
		default:
			rc.errorf("ERR syntax error")
			return
		}
	}
	prefix := []byte(pattern[:strings.IndexAny(pattern+"*", `*?[\`)])
	route, cons := rc.readRoute()
	parts := rc.srv.n.table().NumPartitions()
	var keys [][]byte
	for examined := 0; strings_ && pos.part < parts && examined < count; {
		var page *gridpb.ScanResponse
		req := &gridpb.ScanRequest{Map: rc.mapN, Partition: uint32(pos.part), Prefix: prefix, StartAfter: pos.after,
			Limit: uint32(count - examined), Consistency: cons}
		err := rc.srv.at(rc.ctx, pos.part, route, func(ctx context.Context, kv kvCalls) error {
			st, err := kv.Scan(ctx, req)
			if err != nil {
				return err
			}
			page, err = st.Recv()
			return err
		})
		if err != nil {
			rc.fail(err)
			return
		}
		for _, e := range page.Entries {
			examined++
			pos.after = e.Key
			if pattern == "" || globMatch(pattern, string(e.Key)) {
				keys = append(keys, e.Key)
			}
		}
		if !page.More {
			pos.part, pos.after = pos.part+1, nil
		}
	}
	next := uint64(0)
	if strings_ && pos.part < parts {
		next = rc.srv.cursors.put(pos)
	}
	rc.out = redcon.AppendArray(rc.out, 2)
	rc.out = redcon.AppendBulkString(rc.out, strconv.FormatUint(next, 10))
	rc.out = redcon.AppendArray(rc.out, len(keys))
	for _, k := range keys {
		rc.bulk(k)
	}
}

// globMatch reports whether s matches a Redis glob pattern: * (any run), ?
// (any byte), [abc], [^a-c] (classes, ranges, negation) and \x (x itself).
func globMatch(pattern, s string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for len(pattern) > 1 && pattern[1] == '*' {
				pattern = pattern[1:]
			}
			if len(pattern) == 1 {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if globMatch(pattern[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
		case '[':
			if len(s) == 0 {
				return false
			}
			rest, ok := matchClass(pattern[1:], s[0])
			if !ok {
				return false
			}
			pattern, s = rest, s[1:]
			continue
		case '\\':
			if len(pattern) > 1 {
				pattern = pattern[1:]
			}
			fallthrough
		default:
			if len(s) == 0 || s[0] != pattern[0] {
				return false
			}
		}
		pattern, s = pattern[1:], s[1:]
	}
	return len(s) == 0
}

// matchClass matches c against the class that starts p (after its '[') and
// returns the pattern after the class.
func matchClass(p string, c byte) (string, bool) {
	negate := len(p) > 0 && p[0] == '^'
	if negate {
		p = p[1:]
	}
	match := false
	for len(p) > 0 && p[0] != ']' {
		lo := p[0]
		if lo == '\\' && len(p) > 1 {
			p = p[1:]
			lo = p[0]
		}
		hi := lo
		if len(p) > 2 && p[1] == '-' && p[2] != ']' {
			hi = p[2]
			p = p[2:]
			if lo > hi {
				lo, hi = hi, lo
			}
		}
		if lo <= c && c <= hi {
			match = true
		}
		p = p[1:]
	}
	if len(p) > 0 {
		p = p[1:] // the ']'
	}
	return p, match != negate
}

package identity

import "sync"

// maxLogins bounds the cache; past it the cache starts over, which costs
// one /proc read per live session.
const maxLogins = 1 << 16

// loginCache maps audit session ids to login uids. A nil cache keeps
// nothing.
type loginCache struct {
	mu sync.RWMutex
	m  map[uint32]uint32
}

func newLoginCache() *loginCache { return &loginCache{m: map[uint32]uint32{}} }

func (c *loginCache) get(id uint32) (uint32, bool) {
	if c == nil {
		return 0, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	uid, ok := c.m[id]
	return uid, ok
}

func (c *loginCache) put(id, uid uint32) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxLogins {
		clear(c.m)
	}
	c.m[id] = uid
}

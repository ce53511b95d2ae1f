package identity

import (
	"os/user"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Users resolves uids to names and group memberships through the system's
// user database (NSS with cgo, /etc/passwd and /etc/group without), caching
// answers for a while: group changes take effect within TTL, and a logon
// storm does not hit LDAP once per process.
type Users struct {
	TTL time.Duration

	mu    sync.Mutex
	cache map[uint32]userEntry
}

type userEntry struct {
	name   string
	groups []string
	at     time.Time
}

// NewUsers returns a cache with the given time to live.
func NewUsers(ttl time.Duration) *Users {
	return &Users{TTL: ttl, cache: map[uint32]userEntry{}}
}

// Lookup returns the user name of uid (its decimal form if unknown) and the
// names of its groups (primary and supplementary).
func (u *Users) Lookup(uid uint32) (name string, groups []string) {
	u.mu.Lock()
	e, ok := u.cache[uid]
	u.mu.Unlock()
	if ok && time.Since(e.at) < u.TTL {
		return e.name, e.groups
	}
	e = userEntry{name: strconv.FormatUint(uint64(uid), 10), at: time.Now()}
	if usr, err := user.LookupId(e.name); err == nil {
		e.name = usr.Username
		if gids, err := usr.GroupIds(); err == nil {
			for _, gid := range gids {
				if g, err := user.LookupGroupId(gid); err == nil {
					e.groups = append(e.groups, g.Name)
				} else {
					e.groups = append(e.groups, gid)
				}
			}
		}
	}
	u.mu.Lock()
	u.cache[uid] = e
	u.mu.Unlock()
	return e.name, e.groups
}

// Name returns the user name of uid.
func (u *Users) Name(uid uint32) string {
	n, _ := u.Lookup(uid)
	return n
}

// IsAdmin reports whether uid is an administrator: listed by name or
// number in users, or a member of one of groups.
func (u *Users) IsAdmin(uid uint32, users, groups []string) bool {
	name, member := u.Lookup(uid)
	num := strconv.FormatUint(uint64(uid), 10)
	for _, au := range users {
		if au == name || au == num {
			return true
		}
	}
	for _, g := range member {
		if slices.Contains(groups, g) {
			return true
		}
	}
	return false
}

// Flush forgets every cached answer (on config reload).
func (u *Users) Flush() {
	u.mu.Lock()
	clear(u.cache)
	u.mu.Unlock()
}

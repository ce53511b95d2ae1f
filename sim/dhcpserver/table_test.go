package dhcpserver

import (
	"net/netip"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	now := time.Unix(1000, 0)
	hold := 10 * time.Second
	type step struct {
		do     string // offer, bind, renew, release, decline, drop
		client string
		addr   string // requested / bound / released address
		at     time.Duration
		want   string // offered address, "" for none; for bind etc. "ok"/"fail"
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"first free, reserved skipped", []step{
			{do: "offer", client: "a", want: "10.0.0.2"}, // .1 is the server
			{do: "offer", client: "b", want: "10.0.0.3"},
		}},
		{"offer is stable per client", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "offer", client: "a", want: "10.0.0.2"},
		}},
		{"requested address honoured when free", []step{
			{do: "offer", client: "a", addr: "10.0.0.4", want: "10.0.0.4"},
			{do: "offer", client: "b", addr: "10.0.0.4", want: "10.0.0.2"},
		}},
		{"an expired offer frees the address", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "bind", client: "b", addr: "10.0.0.3", want: "ok"},
			{do: "bind", client: "c", addr: "10.0.0.4", want: "ok"},
			{do: "bind", client: "d", addr: "10.0.0.5", want: "ok"},
			{do: "offer", client: "e", at: 9 * time.Second, want: ""},
			{do: "offer", client: "e", at: 11 * time.Second, want: "10.0.0.2"},
		}},
		{"fresh addresses before ones another client held", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "offer", client: "b", at: 11 * time.Second, want: "10.0.0.3"},
		}},
		{"bind and renew", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "bind", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "bind", client: "b", addr: "10.0.0.2", want: "fail"},
			{do: "renew", client: "a", addr: "10.0.0.2", at: 30 * time.Second, want: "ok"},
			{do: "renew", client: "a", addr: "10.0.0.3", at: 30 * time.Second, want: "fail"}, // holds .2
			{do: "offer", client: "b", want: "10.0.0.3"},
		}},
		{"renewal of an unknown but free address is accepted", []step{
			{do: "renew", client: "a", addr: "10.0.0.4", want: "ok"},
			{do: "renew", client: "b", addr: "10.0.0.4", want: "fail"},
		}},
		{"out of range and reserved are refused", []step{
			{do: "bind", client: "a", addr: "10.0.0.9", want: "fail"},
			{do: "bind", client: "a", addr: "10.0.0.1", want: "fail"},
		}},
		{"release keeps the client's address for it", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "bind", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "release", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "release", client: "a", addr: "10.0.0.2", want: "fail"},
			{do: "offer", client: "a", want: "10.0.0.2"},
		}},
		{"lease expiry frees the address", []step{
			{do: "bind", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "bind", client: "b", addr: "10.0.0.3", want: "ok"},
			{do: "bind", client: "c", addr: "10.0.0.4", want: "ok"},
			{do: "bind", client: "d", addr: "10.0.0.5", want: "ok"},
			{do: "offer", client: "e", at: 59 * time.Second, want: ""},
			{do: "offer", client: "e", at: 61 * time.Second, want: "10.0.0.2"},
		}},
		{"decline withholds", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "bind", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "decline", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "offer", client: "a", want: "10.0.0.3"},
			{do: "offer", client: "b", want: "10.0.0.4"},
			{do: "offer", client: "c", at: 1000 * time.Second, want: "10.0.0.5"}, // .2 still declined
		}},
		{"dropped offer frees the address", []step{
			{do: "offer", client: "a", want: "10.0.0.2"},
			{do: "drop", client: "a"},
			{do: "bind", client: "b", addr: "10.0.0.3", want: "ok"},
			{do: "bind", client: "c", addr: "10.0.0.4", want: "ok"},
			{do: "bind", client: "d", addr: "10.0.0.5", want: "ok"},
			{do: "offer", client: "e", want: "10.0.0.2"},
		}},
		{"exhausted", []step{
			{do: "bind", client: "a", addr: "10.0.0.2", want: "ok"},
			{do: "bind", client: "b", addr: "10.0.0.3", want: "ok"},
			{do: "bind", client: "c", addr: "10.0.0.4", want: "ok"},
			{do: "bind", client: "d", addr: "10.0.0.5", want: "ok"},
			{do: "offer", client: "e", want: ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(a("10.0.0.1"), a("10.0.0.5"), a("10.0.0.1"))
			for i, s := range tc.steps {
				at := now.Add(s.at)
				var req netip.Addr
				if s.addr != "" {
					req = a(s.addr)
				}
				var got string
				switch s.do {
				case "offer":
					if o, ok := tb.offer(s.client, req, hold, at); ok {
						got = o.String()
					}
				case "bind", "renew":
					got = okFail(tb.bind(s.client, req, time.Minute, s.do == "renew", at))
				case "release":
					got = okFail(tb.release(s.client, req, at))
				case "decline":
					got = okFail(tb.decline(s.client, req, time.Time{}))
				case "drop":
					tb.dropOffer(s.client, at)
				}
				if got != s.want {
					t.Fatalf("step %d %s %s %s: got %q, want %q", i, s.do, s.client, s.addr, got, s.want)
				}
			}
		})
	}
}

func okFail(ok bool) string {
	if ok {
		return "ok"
	}
	return "fail"
}

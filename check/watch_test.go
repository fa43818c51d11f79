package check

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
)

// TestCheckWatch feeds checkWatch small histories: a covered one passes,
// and each kind of violation is named.
func TestCheckWatch(t *testing.T) {
	s := time.Second
	ops := []Op{
		{Kind: KindPut, Key: "a", Value: "1", Rev: 3, Outcome: OK, Call: s, Return: 2 * s},
		{Kind: KindDel, Key: "a", Found: true, Rev: 7, Outcome: OK, Call: 3 * s, Return: 4 * s},
		{Kind: KindDel, Key: "b", Found: false, Rev: 1, Outcome: OK, Call: s, Return: 2 * s}, // wrote nothing
		{Kind: KindTTLPut, Key: "t", Value: "x", TTL: s, Rev: 5, Outcome: OK, Call: s, Return: 2 * s},
		{Kind: KindTTLGet, Key: "t", Outcome: OK, Call: 9 * s, Return: 10 * s}, // absent: expired
	}
	good := []WatchEvent{
		{Type: client.EventPut, Key: "a", Rev: 3},
		{Type: client.EventPut, Key: "t", Rev: 5},
		{Type: client.EventDelete, Key: "a", Rev: 7},
		{Type: client.EventExpire, Key: "t", Rev: 8},
	}
	if vs := checkWatch(ops, good, nil); len(vs) != 0 {
		t.Fatalf("covered history: %v", vs)
	}
	for name, tc := range map[string]struct {
		events []WatchEvent
		ended  error
		want   string
	}{
		"lost delete": {[]WatchEvent{good[0], good[1], good[3]}, nil, `key "a": the last event is a put of revision 3`},
		"no event":    {[]WatchEvent{good[1], good[3]}, nil, `key "a": no event`},
		"no expiry":   {good[:3], nil, `key "t": read absent`},
		"duplicate":   {append(good[:4:4], good[2]), nil, `key "a": delete event of revision 7 at 0.000s after the delete event of revision 7`},
		"ended":       {good, errors.New("closed: cursor_expired"), "cursor_expired"},
	} {
		vs := checkWatch(ops, tc.events, tc.ended)
		if len(vs) != 1 || !strings.Contains(vs[0].Detail, tc.want) {
			t.Errorf("%s: got %v, want one violation with %q", name, vs, tc.want)
		}
	}
}

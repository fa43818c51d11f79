package watchspec

import (
	"errors"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
)

func TestValidDeliver(t *testing.T) {
	for _, ok := range []string{"_INBOX.x", "_INBOX.abc.def", "_INBOX.router.Zq1"} {
		if err := ValidDeliver(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "_INBOX", "_INBOX.", "_INBOX..x", "_INBOX.*", "_INBOX.>", "_INBOX.a.>", "_inbox.x",
		"$JS.API.STREAM.DELETE.KV_latchkey_shard_0", "$KV.latchkey_shard_0.a", "latchkey.kv.put", "x._INBOX.y", "_INBOX.a b"} {
		err := ValidDeliver(bad)
		if !errors.Is(err, apierr.ErrInvalid) || !errors.Is(err, apierr.ReasonInvalidDeliver) {
			t.Errorf("%q: %v, want 400 invalid_deliver", bad, err)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := FormatCursor(12345, 1733070000123)
	seq, ms, err := ParseCursor(c)
	if err != nil || seq != 12345 || ms != 1733070000123 {
		t.Fatalf("%q -> %d %d %v", c, seq, ms, err)
	}
	for _, bad := range []string{"", "12", "a-1", "1-b", "-", "1-"} {
		if _, _, err := ParseCursor(bad); !errors.Is(err, apierr.ReasonInvalidCursor) {
			t.Errorf("%q: %v, want invalid_cursor", bad, err)
		}
	}
}

func TestValidWatchID(t *testing.T) {
	if !ValidWatchID("GrWMBbpSLHlgPbon9x27oe") || ValidWatchID("") || ValidWatchID("a.b") || ValidWatchID("*") {
		t.Fatal("watch id rules")
	}
}

// Package watchspec holds the rules of latchkey.kv.watch that the router,
// storage and the client share: what a deliver subject and a watch id may
// be, and how a cursor is written. Keeping them in one place means the
// router refuses exactly what storage would.
package watchspec

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/latchkey/latchkey/kit/apierr"
)

// OpWatch is the shard operation that starts one shard's feed of a watch
// (latchkey.shard.<id>.watch).
const OpWatch = "watch"

var watchIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidWatchID reports whether id can be a watch id: it becomes a subject
// token of the control subjects, so it must be one safe token.
func ValidWatchID(id string) bool { return watchIDPattern.MatchString(id) }

// ValidDeliver checks a deliver subject: a literal subject under _INBOX.,
// so a watch can never make storage publish anywhere else (the event
// connection's permissions enforce the same thing a second time). Failures
// are 400 invalid_deliver.
func ValidDeliver(s string) error {
	bad := func(why string) error {
		return apierr.Errorf(apierr.ReasonInvalidDeliver, "deliver %q must be a subject under _INBOX.: %s", s, why)
	}
	if !strings.HasPrefix(s, "_INBOX.") {
		return bad("it does not start with _INBOX.")
	}
	if len(s) > 512 {
		return bad("it is longer than 512 bytes")
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return bad("it has an empty or wildcard token")
		}
		if strings.ContainsAny(tok, " \t\r\n") {
			return bad("it contains whitespace")
		}
	}
	return nil
}

// FormatCursor writes a shard position: the stream sequence and the
// server's timestamp of the stream message at it, in unix milliseconds
// ("<seq>-<unix_ms>"). The timestamp lets any instance of the shard decide
// whether the expiry markers a resume may need can already be gone.
func FormatCursor(seq uint64, unixMs int64) string {
	return strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(unixMs, 10)
}

// ParseCursor is the inverse of FormatCursor; failures are 400
// invalid_cursor.
func ParseCursor(c string) (seq uint64, unixMs int64, err error) {
	a, b, ok := strings.Cut(c, "-")
	if ok {
		seq, err = strconv.ParseUint(a, 10, 64)
		if err == nil {
			unixMs, err = strconv.ParseInt(b, 10, 64)
		}
	}
	if !ok || err != nil {
		return 0, 0, apierr.Errorf(apierr.ReasonInvalidCursor, "cursor %q is not one latchkey handed out (<seq>-<unix_ms>)", c)
	}
	return seq, unixMs, nil
}

// Package limits checks requests against the limits of docs/API.md, and
// says in its error which limit was broken. Router, storage and locker all
// call it, so a limit is written once.
package limits

import (
	"unicode/utf8"

	"github.com/latchkey/latchkey/kit/apierr"
)

// The limits of the v1 contract.
const (
	MaxKeyBytes      = 1024
	DefaultMaxValue  = 512 * 1024
	MaxLockNameBytes = 256
	MaxOwnerBytes    = 256
	MinTTLMillis     = 1000
	DefaultScanLimit = 100
	MaxScanLimit     = 1000
	// MaxTTLMillis keeps ttl_ms well inside time.Duration and the server's
	// Nats-TTL parser (one year).
	MaxTTLMillis = 365 * 24 * 3600 * 1000
)

// Field is a checked text field: its name for messages and the fixed
// reasons its failures carry (reasons are never built from the name, so
// they stay snake_case words of apierr). Empty is "" for a field that may
// be empty.
type Field struct {
	Name                    string
	Empty, TooLong, Invalid apierr.Reason
}

// The text fields of the v1 requests.
var (
	KeyField       = Field{"key", apierr.ReasonEmptyKey, apierr.ReasonKeyTooLong, apierr.ReasonInvalidKey}
	PrefixField    = Field{"prefix", "", apierr.ReasonPrefixTooLong, apierr.ReasonInvalidPrefix}
	AfterField     = Field{"after", "", apierr.ReasonAfterTooLong, apierr.ReasonInvalidAfter}
	NameField      = Field{"name", apierr.ReasonEmptyName, apierr.ReasonNameTooLong, apierr.ReasonInvalidName}
	OwnerField     = Field{"owner", apierr.ReasonEmptyOwner, apierr.ReasonOwnerTooLong, apierr.ReasonInvalidOwner}
	FenceLockField = Field{"fence.lock", apierr.ReasonEmptyFenceLock, apierr.ReasonFenceLockTooLong, apierr.ReasonInvalidFenceLock}
)

// Key checks a key, or a key-like string such as a scan prefix.
func Key(f Field, key string) error { return text(f, key, MaxKeyBytes) }

// LockName checks a lock name.
func LockName(f Field, name string) error { return text(f, name, MaxLockNameBytes) }

// Owner checks a lock owner.
func Owner(owner string) error { return text(OwnerField, owner, MaxOwnerBytes) }

func text(f Field, s string, max int) error {
	switch {
	case s == "" && f.Empty != "":
		return apierr.Errorf(f.Empty, "%s must not be empty", f.Name)
	case len(s) > max:
		return apierr.Errorf(f.TooLong, "%s is %d bytes; the limit is %d bytes", f.Name, len(s), max)
	case !utf8.ValidString(s):
		return apierr.Errorf(f.Invalid, "%s is not valid UTF-8", f.Name)
	}
	return nil
}

// Value checks a value against the deployment's maximum.
func Value(v []byte, max int) error {
	if len(v) > max {
		return apierr.Errorf(apierr.ReasonValueTooLarge, "value is %d bytes; the limit is %d bytes", len(v), max)
	}
	return nil
}

// TTL checks a ttl_ms, the one time-to-live field of the API. Zero means
// "none" where optional is set.
func TTL(ms int64, optional bool) error {
	switch {
	case ms == 0 && optional:
		return nil
	case ms < MinTTLMillis:
		return apierr.Errorf(apierr.ReasonTTLTooShort, "ttl_ms is %d; it must be at least %d", ms, MinTTLMillis)
	case ms > MaxTTLMillis:
		return apierr.Errorf(apierr.ReasonTTLTooLong, "ttl_ms is %d; it must be at most %d (one year)", ms, MaxTTLMillis)
	}
	return nil
}

// ScanLimit resolves a scan page size: 0 means the default.
func ScanLimit(n uint32) (int, error) {
	switch {
	case n == 0:
		return DefaultScanLimit, nil
	case n > MaxScanLimit:
		return 0, apierr.Errorf(apierr.ReasonLimitTooLarge, "limit is %d; it must be at most %d", n, MaxScanLimit)
	}
	return int(n), nil
}

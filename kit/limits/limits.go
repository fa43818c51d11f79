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

// Key checks a key (or a key-like string such as a scan prefix when
// allowEmpty is set).
func Key(field, key string, allowEmpty bool) error {
	return text(field, key, MaxKeyBytes, allowEmpty)
}

// LockName checks a lock name.
func LockName(field, name string) error { return text(field, name, MaxLockNameBytes, false) }

// Owner checks a lock owner.
func Owner(owner string) error { return text("owner", owner, MaxOwnerBytes, false) }

func text(field, s string, max int, allowEmpty bool) error {
	switch {
	case s == "" && !allowEmpty:
		return apierr.Invalid("empty_"+field, "%s must not be empty", field)
	case len(s) > max:
		return apierr.TooLarge(field+"_too_long", "%s is %d bytes; the limit is %d bytes", field, len(s), max)
	case !utf8.ValidString(s):
		return apierr.Invalid("invalid_"+field, "%s is not valid UTF-8", field)
	}
	return nil
}

// Value checks a value against the deployment's maximum.
func Value(v []byte, max int) error {
	if len(v) > max {
		return apierr.TooLarge("value_too_large", "value is %d bytes; the limit is %d bytes", len(v), max)
	}
	return nil
}

// TTL checks a time-to-live in milliseconds. Zero means "none" where
// optional is set.
func TTL(field string, ms int64, optional bool) error {
	switch {
	case ms == 0 && optional:
		return nil
	case ms < MinTTLMillis:
		return apierr.Invalid(field+"_too_short", "%s is %d; it must be at least %d", field, ms, MinTTLMillis)
	case ms > MaxTTLMillis:
		return apierr.Invalid(field+"_too_long", "%s is %d; it must be at most %d (one year)", field, ms, MaxTTLMillis)
	}
	return nil
}

// ScanLimit resolves a scan page size: 0 means the default.
func ScanLimit(n uint32) (int, error) {
	switch {
	case n == 0:
		return DefaultScanLimit, nil
	case n > MaxScanLimit:
		return 0, apierr.Invalid("limit_too_large", "limit is %d; it must be at most %d", n, MaxScanLimit)
	}
	return int(n), nil
}

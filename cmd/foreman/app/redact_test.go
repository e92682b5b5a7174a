package app

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// testPassword is the secret no message may show.
const testPassword = "s3cret"

// hideUserinfo takes the credentials out of an error that quotes the URL, as url.Parse's
// errors do, and keeps the error's chain.
func TestHideUserinfo(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{"nats://app:s3cret@h:bad", "nats://s3cret@h:bad", "nats://app:s3cret@h:4222/%zz"} {
		_, perr := url.Parse(raw)
		if perr == nil {
			t.Fatalf("%s parses", raw)
		}
		err := hideUserinfo(fmt.Errorf("connect: %w", perr), "nats://a:4222,"+raw)
		var ue *url.Error
		if strings.Contains(err.Error(), testPassword) || !errors.As(err, &ue) {
			t.Errorf("%s: %q (url.Error in the chain: %v)", raw, err, errors.As(err, &ue))
		}
	}
	plain := errors.New("nats: no servers available for connection")
	if got := hideUserinfo(plain, "nats://app:s3cret@h:4222"); got != plain {
		t.Errorf("an error without credentials was changed: %v", got)
	}
}

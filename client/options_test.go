package client_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A token read from a file keeps its newline. No HTTP header can carry it, so every
// request failed before it left, as a *ConnectionError: "cannot reach" a foreman that was
// up, matching ErrUnreachable (which callers retry for ever). New now says what is wrong.
func TestNewRefusesATokenNoHeaderCarries(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{AuthToken: "s3cret"})
	for _, tok := range []string{"s3cret\n", "s3cret\r\n", "s3\x00cret", "s3cret\x7f"} {
		c, err := client.New(f.URL, client.WithToken(tok))
		if err == nil {
			_, callErr := c.Tags(testCtx(t))
			_ = c.Close()
			t.Errorf("New with token %q: no error; a call then fails with %v (ErrUnreachable: %v)",
				tok, callErr, errors.Is(callErr, client.ErrUnreachable))
			continue
		}
		if !strings.Contains(err.Error(), "WithToken") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("New with token %q: %v, want an error naming WithToken, without the token", tok, err)
		}
	}
	// A tab and bytes past ASCII are header text: sent as given (foreman answers 401).
	c := newClient(t, f.URL, client.WithToken("s3cret\twith tab é"))
	var ae *client.APIError
	if _, err := c.Tags(testCtx(t)); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("a wrong but sendable token: %v, want a 401", err)
	}
	c = newClient(t, f.URL, client.WithToken("s3cret"))
	if _, err := c.Tags(testCtx(t)); err != nil {
		t.Errorf("the right token: %v", err)
	}
}

// A nil Option (one chosen conditionally, left unset) and WithHTTPClient(nil) panicked:
// New called the nil func, and every request a nil *http.Client. Both now leave the
// defaults.
func TestNilOptionsKeepTheDefaults(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	var unset client.Option
	for name, opts := range map[string][]client.Option{
		"nil Option":          {unset, client.WithPollingOnly()},
		"WithHTTPClient(nil)": {client.WithHTTPClient(nil)},
	} {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s: panic: %v", name, p)
				}
			}()
			c, err := client.New(f.URL, opts...)
			if err != nil {
				t.Errorf("%s: New: %v", name, err)
				return
			}
			defer c.Close()
			if _, err := c.Tags(testCtx(t)); err != nil {
				t.Errorf("%s: Tags: %v", name, err)
			}
		}()
	}
}

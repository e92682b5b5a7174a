package app

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/gateway"
)

// The start log names each program of the named tokens once, and never a token.
func TestTokenNames(t *testing.T) {
	ts := []gateway.NamedToken{{Program: "alice", Token: "tokA"}, {Program: "bob", Token: "tokB"}, {Program: "carol", Token: "tokC"}, {Program: "alice", Token: "tokA2"}}
	if got := tokenNames(ts); strings.Join(got, ",") != "alice,bob,carol" {
		t.Errorf("tokenNames %v", got)
	}
}

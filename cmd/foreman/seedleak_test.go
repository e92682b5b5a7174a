package main

import (
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// FOREMAN_NATS_NKEY_SEED and FOREMAN_NATS_CREDS name files. An operator who puts the seed
// itself there gets an error that says so, and never the seed quoted back: it would land
// in a terminal's scroll-back or the service's log.
func TestPastedSeedIsNotQuoted(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	for _, env := range []string{"FOREMAN_NATS_NKEY_SEED", "FOREMAN_NATS_CREDS"} {
		_, err := parseConfig(t, nil, map[string]string{env: string(seed), "FOREMAN_NATS_URL": "nats://x:4222"})
		if err == nil {
			t.Fatalf("%s holding a seed accepted", env)
		}
		if strings.Contains(err.Error(), string(seed)) || strings.Contains(err.Error(), string(seed[:12])) {
			t.Fatalf("%s: the error quotes the seed: %v", env, err)
		}
		if !strings.Contains(err.Error(), env+"=(hidden") {
			t.Fatalf("%s: error %v, want the value hidden", env, err)
		}
	}
}

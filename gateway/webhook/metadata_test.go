package webhook

import (
	"context"
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// The clouds' instance metadata services that are not at the link-local
// 169.254.169.254 are refused like it: AWS's IPv6 endpoint (fd00:ec2::254, a ULA),
// Google Cloud's (fd20:ce::254), Alibaba Cloud's 100.100.100.200 (in the shared space
// allowed by default) and Azure's WireServer 168.63.129.16 (a public address). They
// were allowed unless FOREMAN_WEBHOOK_DENY_PRIVATE, and the last always: a webhook to
// one is a POST with foreman's credentials-free body, but from inside the instance.
// By name at dial time (the resolver seam's answers, never dialled), by literal at
// submit, and through an address that embeds the IPv4 ones (NAT64).
func TestPolicyRefusesCloudMetadataAddresses(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"fd00:ec2::254", "fd20:ce::254", "100.100.100.200", "168.63.129.16", "64:ff9b::6464:64c8"} {
		p := Policy{LookupNetIP: names(map[string][]string{"meta.test": {a}})}
		p.connect = noConnect(t, "dial "+a)
		err := p.CheckAddr(context.Background(), netip.MustParseAddr(a), 80)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "metadata") {
			t.Errorf("CheckAddr(%s) = %v, want refused as a cloud metadata address", a, err)
		}
		if conn, err := p.DialContext(context.Background(), "tcp", "meta.test:80"); !errors.Is(err, ErrRefused) {
			if conn != nil {
				conn.Close()
			}
			t.Errorf("dial meta.test (%s): %v, want a refusal", a, err)
		}
		u, _ := url.Parse("http://" + netip.AddrPortFrom(netip.MustParseAddr(a), 80).String() + "/h")
		if err := p.CheckURL(u); !errors.Is(err, ErrRefused) {
			t.Errorf("CheckURL(%s) = %v, want a refusal", u, err)
		}
	}
	// Their neighbours are not.
	for _, a := range []string{"fd00:ec2::253", "100.100.100.100", "168.63.129.17"} {
		if err := (&Policy{}).CheckAddr(context.Background(), netip.MustParseAddr(a), 80); err != nil {
			t.Errorf("CheckAddr(%s) = %v, want allowed", a, err)
		}
	}
}

package cloud

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestServerSummary: GET /_lab/servers (what `cookbook-lab status` reads) lists each
// server's name, status and image name, sorted by name, without authentication.
func TestServerSummary(t *testing.T) {
	seed := Seed{Images: []Image{{ID: "i12", Name: "debian-12.0-bookworm"}, {ID: "i13", Name: "debian-13.0-trixie"}}}
	c, err := New("127.0.0.1:0", seed, Options{AddressPrefix: "127.42.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, s := range []Server{{Name: "w-2", ImageID: "i13"}, {Name: "w-1", ImageID: "i12"}, {Name: "w-3", ImageID: "gone"}} {
		if _, err := c.AddServer(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Get(c.URL + "/_lab/servers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []ServerSummary
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i].Address = ""
	}
	want := []ServerSummary{{"w-1", "ACTIVE", "debian-12.0-bookworm", ""}, {"w-2", "ACTIVE", "debian-13.0-trixie", ""}, {"w-3", "ACTIVE", "gone", ""}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("servers (-want +got):\n%s", diff)
	}
}

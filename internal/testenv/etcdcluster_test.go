package testenv

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A 3-member cluster answers with a member killed (quorum holds), a
// restarted member rejoins on its data and sees what was written while it
// was down, and with two members frozen nothing answers until they thaw.
func TestEtcdCluster(t *testing.T) {
	t.Parallel()
	c := StartEtcdCluster(t, 3)
	put := func(endpoint, k string) error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = cli.Put(ctx, k, "v")
		return err
	}
	steps := []struct {
		name    string
		do      func()
		through int // member whose endpoint is written through
		wantErr bool
	}{
		{"all up", func() {}, 0, false},
		{"m0 killed", c.Members[0].Kill, 1, false},
		{"m0 restarted", func() {
			if err := c.Members[0].Restart(20 * time.Second); err != nil {
				t.Fatal(err)
			}
		}, 0, false},
		{"m1 and m2 frozen", func() { c.Members[1].Freeze(); c.Members[2].Freeze() }, 0, true},
		{"thawed", func() {
			c.Members[1].Thaw()
			c.Members[2].Thaw()
			if err := c.WaitReady(20 * time.Second); err != nil {
				t.Fatal(err)
			}
		}, 2, false},
	}
	for _, s := range steps {
		s.do()
		err := put(c.Endpoints[s.through], "k-"+s.name)
		// Where a quorum is left, a new leader may take an election or
		// two on a loaded machine: retried.
		for deadline := time.Now().Add(15 * time.Second); err != nil && !s.wantErr && time.Now().Before(deadline); {
			err = put(c.Endpoints[s.through], "k-"+s.name)
		}
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: put through %s: %v (want error: %v)", s.name, c.Members[s.through].Name, err, s.wantErr)
		}
	}
}

import numpy as np
import pytest

from fedutils import data


def test_iris_binary_is_virginica_vs_rest():
    x, y = data.load_iris_binary()
    assert x.shape == (150, 4) and x.dtype == np.float32
    assert y.dtype == np.int32 and set(np.unique(y)) == {0, 1} and y.sum() == 50
    _, y_setosa = data.load_iris_binary("setosa")
    assert y_setosa[:50].all() and not y_setosa[50:].any()


def test_breast_cancer_positive_means_malignant():
    x, y = data.load_breast_cancer()
    assert x.shape == (569, 30) and x.dtype == np.float32
    assert y.sum() == 212  # malignant cases
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-3)
    raw, _ = data.load_breast_cancer(standardize=False)
    assert raw.max() > 100


def test_digits_scaled_and_image_shape():
    x, y = data.load_digits()
    assert x.shape == (1797, 64) and 0 <= x.min() and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    xi, _ = data.load_digits(images=True)
    assert xi.shape == (1797, 8, 8, 1)


def test_load_by_name_and_unknown_name():
    x, _ = data.load("iris")
    assert x.shape == (150, 4)
    with pytest.raises(ValueError, match="name must be one of"):
        data.load("mnist")
    with pytest.raises(ValueError, match="positive_class"):
        data.load_iris_binary("rose")


def test_train_test_split_is_stratified_disjoint_and_seeded():
    x, y = data.load_digits()
    xtr, xte, ytr, yte = data.train_test_split(x, y, test_fraction=0.25, seed=3)
    assert len(ytr) + len(yte) == len(y)
    assert abs(len(yte) - 0.25 * len(y)) < 10
    for label in range(10):  # every class in the same proportion
        assert abs(np.mean(yte == label) - np.mean(y == label)) < 0.01
    again = data.train_test_split(x, y, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again[3], yte)
    rows = {r.tobytes() for r in xtr}
    assert sum(r.tobytes() in rows for r in xte) <= 5  # only digits duplicated in the data set
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(x, y, test_fraction=1.0)
    with pytest.raises(ValueError, match="same number of examples"):
        data.train_test_split(x[:10], y)


def test_make_client_datasets_structure_and_order():
    x, y = data.load_iris_binary()
    parts = [np.arange(0, 7), np.arange(7, 150)]
    ds = data.make_client_datasets(x, y, parts, batch_size=5, seed=1)
    assert len(ds) == 2
    spec = ds[0].element_spec
    assert set(spec) == {"x", "y"} and spec["x"].shape.as_list() == [None, 4]
    batches = list(ds[0])
    assert [len(b["y"]) for b in batches] == [5, 2]
    seen = np.concatenate([b["x"].numpy() for b in batches])
    np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(x[:7], axis=0))
    # The same batches in the same order every time (epochs, TFF comparison).
    again = np.concatenate([b["x"].numpy() for b in ds[0]])
    np.testing.assert_array_equal(seen, again)


@pytest.mark.parametrize("parts, error, match", [
    ([], ValueError, "at least one client"),
    ([np.array([], dtype=int)], ValueError, "non-empty"),
    ([np.array([0, 200])], ValueError, "outside"),
    ([np.array([0.5, 1.0])], TypeError, "integer"),
    ("0,1,2", TypeError, "list of index arrays"),
])
def test_make_client_datasets_rejects_bad_partitions(parts, error, match):
    x, y = data.load_iris_binary()
    with pytest.raises(error, match=match):
        data.make_client_datasets(x, y, parts)


def test_make_client_datasets_rejects_bad_labels_and_batch():
    x, y = data.load_iris_binary()
    with pytest.raises(ValueError, match="y must"):
        data.make_client_datasets(x, np.zeros((150, 2)), [np.arange(150)])
    with pytest.raises(ValueError, match="batch_size"):
        data.make_client_datasets(x, y, [np.arange(150)], batch_size=0)


def test_shakespeare_offline_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDUTILS_CACHE", str(tmp_path))
    clients = data.load_shakespeare()
    assert len(clients) >= 1000
    assert sum(len(t) >= 1000 for t in clients.values()) >= 500
    assert "HAMLET_HAMLET" in clients and "HAMLET_HORATIO" in clients
    assert clients["HAMLET_HORATIO"].startswith("Friends to this ground.")
    assert "_" not in clients["HAMLET_HAMLET"]  # stage directions removed
    assert (tmp_path / f"shakespeare_v{data.SHAKESPEARE_VERSION}.json").is_file()
    cached = data.load_shakespeare(min_chars=1000)  # from the cache this time
    assert len(cached) == sum(len(t) >= 1000 for t in clients.values())
    with pytest.raises(ValueError, match="min_chars"):
        data.load_shakespeare(min_chars=-1)


def test_client_data_and_its_dataset_hold_the_same_batches():
    x, y = data.load_digits()
    client = data.make_client_data(x, y, [np.arange(0, 47)], batch_size=20, seed=4)[0]
    ds = data.make_client_datasets(x, y, [np.arange(0, 47)], batch_size=20, seed=4)[0]
    assert client.batch_sizes == [20, 20, 7] and len(client) == 47
    for (bx, by), batch in zip(client.batches(), ds):
        np.testing.assert_array_equal(bx, batch["x"].numpy())
        np.testing.assert_array_equal(by, batch["y"].numpy())
    read = data.as_client_data([ds, client.dataset().map(lambda b: b)])
    for other in read:
        np.testing.assert_array_equal(other.x, client.x)
        np.testing.assert_array_equal(other.y, client.y)
        assert other.batch_size == 20


def test_federated_digits_is_the_course_setting():
    split = data.federated_digits(10, "dirichlet", alpha=0.5, seed=1)
    assert len(split.clients) == 10 and len(split.y_test) == 450
    assert sum(len(c) for c in split.clients) == len(split.y_train) == 1347
    again = data.federated_digits(10, "iid", seed=3)
    np.testing.assert_array_equal(split.x_test, again.x_test)   # one test set everywhere
    with pytest.raises(ValueError, match="alpha"):
        data.federated_digits(10, "dirichlet")
    with pytest.raises(ValueError, match="partition"):
        data.federated_digits(10, "random")

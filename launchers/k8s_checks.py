"""What a job's pods could not use, found before anything is sent to a cluster.

Names Kubernetes would refuse (the job's, a Service name; the namespace) and locations no
pod can reach: a run dir, data root or TFDS folder outside the mounted Azure Files share and
not an Azure URL, an Azure URL without credentials, or an account name that could pair with
another account's key. Every problem at once, like the config's own checks.
"""

from __future__ import annotations

from disttrain.config import Config, ConfigError
from disttrain.storage import account_in_url
from launchers import kube_syntax
from launchers.k8s_options import K8sOptions

AZURE_ROOT = "/azure"  # where pods mount the share: /azure/<share>
AZURE_URL_PROTOCOLS = ("az://", "abfs://", "abfss://")


def check_k8s_config(config: Config, k8s: K8sOptions) -> None:
    """Fail on what a pod could not use: bad names, a run dir or data root it cannot reach.

    Every problem at once, like the config's own checks.
    """
    problems = _name_problems(config, k8s) + _storage_problems(k8s)
    locations = [("run_dir", config.run_dir)]
    if config.data.source in ("image_folder", "tfrecord"):
        locations.append(("data.root", config.data.root))
    if config.data.source == "tfds" and config.data.tfds_data_dir:
        locations.append(("data.tfds_data_dir", config.data.tfds_data_dir))
    if config.train.init_from:
        locations.append(("train.init_from", config.train.init_from))
    problems += [p for key, where in locations if (p := _unreachable(key, where, k8s))]
    if problems:
        raise ConfigError.of(problems)


def _name_problems(config: Config, k8s: K8sOptions) -> list[ConfigError]:
    namespace = k8s.namespace
    problems = []
    if not kube_syntax.is_service_name(config.name):
        problems.append(
            ConfigError(
                f"name: got {config.name!r}; accepted on Kubernetes: lower-case letters, "
                "digits and '-', starting with a letter and not ending with '-'",
                "name",
            )
        )
    if not kube_syntax.is_namespace(namespace):  # the kubeconfig's, when the config had none
        problems.append(
            ConfigError(
                f"launcher.k8s.namespace: got {namespace!r}; accepted: "
                f"{kube_syntax.NAMESPACE_ACCEPTED}",
                "launcher.k8s.namespace",
            )
        )
    return problems


def _storage_problems(k8s: K8sOptions) -> list[ConfigError]:
    storage = k8s.storage
    share = storage.azure_file_share
    if storage.account_name and storage.secret:  # its name would pair with the Secret's key
        return [
            ConfigError(
                f"launcher.k8s.storage.account_name: got {storage.account_name!r} with the "
                f"Secret {storage.secret!r}; accepted: empty, the Secret names the account "
                "(account_name is for workload identity, without a Secret)",
                "launcher.k8s.storage.account_name",
            )
        ]
    if storage.azure_file_claim and not share:
        return [
            ConfigError(
                "launcher.k8s.storage.azure_file_claim: set, but azure_file_share is empty; "
                "accepted: the share's name too (it is mounted at /azure/<share>)",
                "launcher.k8s.storage.azure_file_claim",
            )
        ]
    if share and not storage.azure_file_claim and not storage.secret:
        return [
            ConfigError(
                "launcher.k8s.storage.secret: empty, but the Azure Files share "
                f"{share!r} is mounted inline and the driver reads the account from a Secret; "
                "accepted: a Secret name (`disttrain secret create`) or azure_file_claim",
                "launcher.k8s.storage.secret",
            )
        ]
    return []


def _unreachable(key: str, location: str, k8s: K8sOptions) -> ConfigError | None:
    """Why no pod could reach `location`, or None when one can."""
    storage = k8s.storage
    if location.startswith(AZURE_URL_PROTOCOLS):
        in_url = account_in_url(location)
        if storage.account_name and in_url and in_url != storage.account_name:
            return ConfigError(
                f"{key}: got {location!r}, in account {in_url!r}, but "
                f"launcher.k8s.storage.account_name is {storage.account_name!r}; accepted: "
                "one account (the pods take the name from account_name)",
                key,
            )
        if storage.secret:
            return None
        if k8s.service_account:
            if storage.account_name or in_url:
                return None
            return ConfigError(
                f"{key}: got {location!r}, which names no storage account, and the pods have "
                "no Secret to take it from; accepted: launcher.k8s.storage.account_name, or a "
                "URL naming it (abfs://<container>@<account>.dfs.core.windows.net/...)",
                key,
            )
        return ConfigError(
            f"{key}: got {location!r}, but the pods have no Azure credentials; accepted: "
            "launcher.k8s.storage.secret naming a Secret (`disttrain secret create`) or "
            "launcher.k8s.service_account with workload identity",
            key,
        )
    share_root = f"{AZURE_ROOT}/{storage.azure_file_share}/" if storage.azure_file_share else None
    if share_root and location.rstrip("/") + "/" != share_root and location.startswith(share_root):
        return None
    where = f"a path under {share_root}" if share_root else "a path under /azure/<share>/ "
    return ConfigError(
        f"{key}: got {location!r}, which a pod cannot reach (it is not shared storage); "
        f"accepted for Kubernetes: an az://, abfs:// or abfss:// URL, or {where}"
        + ("" if share_root else "(with launcher.k8s.storage.azure_file_share)"),
        key,
    )

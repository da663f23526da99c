"""genlab's federation as a Flower app: the components that RUN/flower-app/pyproject.toml names
(`genlab.federated.app:serverapp`, `genlab.federated.app:clientapp`), for `flwr run` against
any SuperLink. The run directory comes from the app's run config (`run-dir`), which
`genlab federate --mode processes` writes; the code is the simulation's."""

from flwr.client import ClientApp
from flwr.server import ServerApp

from genlab.federated.client import federation_mod, make_client_fn
from genlab.federated.server import server_main

serverapp = ServerApp()


@serverapp.main()
def _main(grid, context) -> None:
    server_main(grid, context, context.run_config["run-dir"])


clientapp = ClientApp(client_fn=make_client_fn(), mods=[federation_mod()])

"""GatewayService: the product-facing API that composes prompt, router, inference and more."""

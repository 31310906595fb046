"""MAPE-K controller: monitors served scores, learns thresholds, plans from runbooks, heals the mesh."""
